"""The humaneval suite, unit-test verification (run_tests / verify_tests) and verify_task's dispatch."""

import pytest

from nanocodegen.humaneval import humaneval_tasks, program_for
from nanocodegen.records import Outcome
from nanocodegen.tasks import load_suite, seed_tasks
from nanocodegen.verifier import CodeVerifier
from nanocodegen.verify_suite import check_solutions, verify_task

TEST = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n"


@pytest.fixture(scope="module")
def tasks():
    return humaneval_tasks()


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(workers=2) as v:
        yield v


def test_the_bundled_problems_load_as_tasks(tasks):
    assert len(tasks) == 164 and [t.id for t in tasks[:2]] == ["HumanEval/0", "HumanEval/1"]
    first = tasks[0]
    assert first.entry_point == "has_close_elements" and first.test.lstrip().startswith("METADATA")
    assert first.prompt.startswith("from typing import List") and first.solution and not first.expected
    assert load_suite("humaneval")[163].id == "HumanEval/163"
    assert program_for(first, "    return 1\n") == first.prompt + "    return 1\n"


def test_every_canonical_solution_passes(tasks):
    report = check_solutions(tasks, workers=2)
    assert report.passed == 164, [(t.id, v.outcome, v.error) for t, v in report.failures()]
    assert report.checks_per_s > 0 and report.isolation["complete"]


def test_wrong_completions_fail_with_the_failing_line(tasks, verifier):
    task = tasks[0]
    verdict = verify_task(verifier, task, "    return False\n", 3000)
    assert (verdict.outcome, verdict.error) == (Outcome.WRONG_OUTPUT, "failed the test on line 10")
    assert verifier.run_tests(program_for(task, "    return False\n"), task.test, task.entry_point) == (
        False, "failed the test on line 10")  # fmt: skip
    assert verifier.run_tests(program_for(task, task.solution), task.test, task.entry_point) == (True, "passed")


def test_run_tests_outcomes(verifier):
    ok = "def f(x):\n    return x + 1\n"
    assert verifier.run_tests(ok, TEST, "f") == (True, "passed")
    assert verifier.run_tests("def f(x):\n    return x + 2\n", TEST, "f") == (False, "failed the test on line 2")
    assert verifier.run_tests("def f(x):\n    return 1 / 0\n", TEST, "f") == (
        False, "ZeroDivisionError: division by zero (line 2)")  # fmt: skip
    assert verifier.run_tests("def g(x):\n    return x\n", TEST, "f") == (False, "the program defines no f")
    assert verifier.run_tests("def f(x):\n    while True:\n        pass\n", TEST, "f", timeout_ms=100) == (
        False, "exceeded the time limit of 100 ms")  # fmt: skip
    assert verifier.run_tests("def f(x) return x", TEST, "f")[1] == "expected ':' (line 1)"
    assert verifier.run_tests("import os\ndef f(x):\n    return x + 1\n", TEST, "f") == (
        False, "module os is not available (line 1)")  # fmt: skip
    # The test code's own errors name its line, not the program's.
    assert verifier.run_tests(ok, "def check(c):\n    assert c(1) < 'x'\n", "f")[1].endswith("(test line 2)")


def test_the_tests_policy_allows_what_humaneval_needs(verifier):
    code = (
        "import math, re, hashlib\nfrom typing import List\n"
        "def f(x: int) -> int:\n    return eval('x + 1') + 0 * math.floor(len(re.findall('a', 'a')))\n"
    )
    assert verifier.run_tests(code, TEST, "f") == (True, "passed")
    assert verifier.verify_tests(code, TEST, "f").outcome is Outcome.CORRECT
    assert verifier.verify("result = eval('1')", "1").outcome is Outcome.UNSAFE  # the task policy does not
    code = (
        "from collections.abc import Iterable\nfrom datetime import datetime\n"
        "def f(x):\n    return x + datetime.strptime('2001', '%Y').year - 2000 + 0 * isinstance(x, Iterable)\n"
    )
    assert verifier.run_tests(code, TEST, "f") == (True, "passed")
    assert verifier.run_tests("import json.tool\ndef f(x):\n    return x + 1\n", TEST, "f") == (
        False, "ModuleNotFoundError: No module named 'json.tool' (line 1)")  # fmt: skip


def test_verify_task_dispatches_on_the_kind_of_task(verifier):
    seed = seed_tasks()[0]
    assert verify_task(verifier, seed, seed.solution, 100).outcome is Outcome.CORRECT
    assert verify_task(verifier, seed, "result = 14", 100).error == "result = 14"


def test_check_solutions_refuses_tasks_without_solutions():
    task = seed_tasks()[0]
    task.solution = ""
    with pytest.raises(ValueError, match="without a reference solution"):
        check_solutions([task])


def test_test_code_that_does_not_compile_is_the_callers_error(verifier):
    with pytest.raises(ValueError, match="the test code does not compile"):
        verifier.run_tests("def f(x):\n    return x\n", "def check(c)\n    pass\n", "f")
    with pytest.raises(ValueError, match="entry_point"):
        verifier.run_tests("def f(x):\n    return x\n", TEST, "f(1)")
