"""CodeVerifier: the sketch's API, its pipeline (size, syntax, safety, run, compare) and feedback texts."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nanocodegen.records import Outcome, Verdict
from nanocodegen.tasks import SEED_SOLUTIONS, TASK_BANK
from nanocodegen.verifier import MAX_CODE_CHARS, CodeVerifier


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(workers=2) as v:
        yield v


# --- the sketch's API ------------------------------------------------------------------------------------


def test_sketch_demo_calls_on_an_instance_and_on_the_class():
    with CodeVerifier() as v:
        assert v.execute("result = sum([1, 2, 3, 4, 5])") == (True, "15")
        ok, reason = v.execute("import os; result = os.getcwd()")
        assert (ok, reason) == (False, "import statements are not allowed (line 1)")
    assert CodeVerifier.execute("result = sum([1, 2, 3, 4, 5])") == (True, "15")
    assert CodeVerifier.execute("import os; result = os.getcwd()")[0] is False
    assert CodeVerifier.verify("result = 2 ** 10", "1024").outcome is Outcome.CORRECT


def test_task_bank_is_the_sketchs():
    assert CodeVerifier.TASK_BANK is TASK_BANK


@pytest.mark.parametrize("i", range(len(TASK_BANK)))
def test_every_seed_solution_is_correct(verifier, i):
    verdict = verifier.verify(SEED_SOLUTIONS[i], TASK_BANK[i][1])
    assert isinstance(verdict, Verdict)
    assert (verdict.outcome, verdict.output, verdict.error) == (Outcome.CORRECT, TASK_BANK[i][1], "")
    assert verdict.ok


def test_execute_reports_failures_as_text(verifier):
    assert verifier.execute("x = 1 / 0") == (False, "ZeroDivisionError: division by zero (line 1)")
    loop = "while True:\n    pass"
    assert verifier.execute(loop, timeout_ms=50) == (False, "exceeded the time limit of 50 ms")
    assert verifier.execute("result = (") == (False, "'(' was never closed (line 1)")


def test_check_syntax_and_check_safety():
    assert CodeVerifier.check_syntax("result = 1") == (True, "OK")
    assert CodeVerifier.check_syntax("result = = 1") == (False, "invalid syntax (line 1)")
    assert CodeVerifier.check_safety("result = 1") == (True, "OK")
    assert CodeVerifier.check_safety("result = eval('1')") == (False, "eval() is not allowed (line 1)")
    assert CodeVerifier.check_safety("result = (") == (False, "'(' was never closed (line 1)")
    assert CodeVerifier().check_syntax("x = 1") == (True, "OK")


# --- one outcome per real program ------------------------------------------------------------------------


def test_wrong_output_shows_the_result(verifier):
    v = verifier.verify("result = 16", "15")
    assert (v.outcome, v.output, v.error) == (Outcome.WRONG_OUTPUT, "16", "result = 16")
    v = verifier.verify("result = 'ab' * 50", "x")
    assert v.error == "result = " + "ab" * 28 + "a..." and len(v.error) == len("result = ") + 60
    v = verifier.verify("result = 'a\\nb'", "x")
    assert v.error == "result = a\\nb"


def test_missing_result_is_wrong_output_with_a_hint(verifier):
    v = verifier.verify("print(15)", "15")
    assert (v.outcome, v.output, v.stdout) == (Outcome.WRONG_OUTPUT, "None", "15\n")
    assert v.error == "result = None (no variable named result)"


@pytest.mark.parametrize(
    "code, error",
    [
        ("result = = 1", "invalid syntax (line 1)"),
        ("if True:\nresult = 1", "expected an indented block after 'if' statement on line 1 (line 2)"),
        ("result = 1\n  x = 2", "unexpected indent (line 2)"),
        ("result = 1\0", "source code cannot contain null bytes"),
        ("result = " + "(" * 300 + "1" + ")" * 300, "too many nested parentheses (line 1)"),
        ("result = " + "-" * 15_000 + "1", "the program is too large or too deeply nested to compile"),
        ("result = 1" + "+1" * 5000, "the program is too deeply nested to compile"),  # RecursionError
    ],
)
def test_syntax_errors(verifier, code, error):
    v = verifier.verify(code, "1")
    assert (v.outcome, v.error) == (Outcome.SYNTAX_ERROR, error)


@pytest.mark.parametrize(
    "code, error",
    [
        ("import os", "import statements are not allowed (line 1)"),
        ("x = 1\nfrom os import path", "import statements are not allowed (line 2)"),
        ("result = eval('1')", "eval() is not allowed (line 1)"),
        ("f = exec", "exec() is not allowed (line 1)"),
        ("result = __import__('os')", "__import__() is not allowed (line 1)"),
        ("result = open('x').read()", "open() is not allowed (line 1)"),
        ("result = getattr(1, 'real')", "getattr() is not allowed (line 1)"),
        ("result = globals()", "globals() is not allowed (line 1)"),
        ("result = vars()", "vars() is not allowed (line 1)"),
        ("result = compile('1', 'f', 'eval')", "compile() is not allowed (line 1)"),
        ("breakpoint()", "breakpoint() is not allowed (line 1)"),
        ("result = input()", "input() is not allowed (line 1)"),
        ("result = ().__class__", "attribute __class__ is not allowed (line 1)"),
        ("result = object.__subclasses__()", "attribute __subclasses__ is not allowed (line 1)"),
        ("def f():\n    pass\nresult = f.__globals__", "attribute __globals__ is not allowed (line 3)"),
        ("result = print.__self__", "attribute __self__ is not allowed (line 1)"),
        ("result = (lambda: 1).__code__", "attribute __code__ is not allowed (line 1)"),
        ("def g():\n    yield 1\nresult = g().gi_frame", "attribute gi_frame is not allowed (line 3)"),
        ("try:\n    1 / 0\nexcept Exception as e:\n    t = e.__traceback__.tb_frame.f_back", "attribute __traceback__ is not allowed (line 4)"),  # noqa: E501
        ("result = __builtins__", "name __builtins__ is not allowed (line 1)"),
        ("result = __loader__", "name __loader__ is not allowed (line 1)"),
        ("__builtins__ = {}", "name __builtins__ is not allowed (line 1)"),
        ("match 1:\n    case int(__class__=c):\n        pass", "attribute __class__ is not allowed (line 2)"),
        ("#" * 20_001, "the program is too long (20001 characters; the limit is 20000)"),
    ],
)
def test_unsafe_programs_are_refused_before_running(verifier, code, error):
    assert MAX_CODE_CHARS == 20_000  # the size case above spells the limit out
    v = verifier.verify(code, "1")
    assert (v.outcome, v.error, v.output, v.wall_ms) == (Outcome.UNSAFE, error, None, 0.0)


def test_policy_allows_ordinary_classes_and_name_checks(verifier):
    code = (
        "class Point:\n"
        "    __slots__ = ('x', 'y')\n"
        "    def __init__(self, x, y):\n"
        "        super().__init__()\n"
        "        self.x, self.y = x, y\n"
        "    def __repr__(self):\n"
        "        return f'P({self.x}, {self.y})'\n"
        "if __name__ == '__main__':\n"
        "    result = (type(Point(1, 2)).__name__, Point(1, 2))"
    )
    v = verifier.verify(code, "('Point', P(1, 2))")
    assert v.outcome is Outcome.CORRECT, v.error


def test_runtime_error_with_line_number(verifier):
    v = verifier.verify("x = 1\nresult = reslt", "1")
    assert (v.outcome, v.error) == (Outcome.RUNTIME_ERROR, "NameError: name 'reslt' is not defined (line 2)")
    v = verifier.verify("result = 1 / 0", "1")
    assert v.error == "ZeroDivisionError: division by zero (line 1)"


def test_infinite_loop_times_out_within_bounded_wall_time(verifier):
    t0 = time.perf_counter()
    v = verifier.verify("while True:\n    pass", "1", timeout_ms=100)
    assert (v.outcome, v.error) == (Outcome.TIMEOUT, "exceeded the time limit of 100 ms")
    assert 100 <= v.wall_ms < 500 and time.perf_counter() - t0 < 1.0


def test_c_level_loop_times_out(verifier):
    v = verifier.verify("result = sum(range(10**15))", "1")
    assert v.outcome is Outcome.TIMEOUT


def test_memory_bomb(verifier):
    v = verifier.verify("x = [0] * 10**10", "1")
    assert (v.outcome, v.error) == (Outcome.MEMORY_LIMIT, "exceeded the memory limit of 256 MiB (line 1)")


def test_print_flood(verifier):
    v = verifier.verify("while True:\n    print('x' * 100000)", "1")
    assert (v.outcome, v.error) == (Outcome.OUTPUT_LIMIT, "printed more than 1 MiB of output")
    assert v.stdout.endswith("x")


def test_verdict_carries_metrics_and_stdout(verifier):
    v = verifier.verify("print('hi')\nresult = sum(range(1000))", "499500")
    assert v.outcome is Outcome.CORRECT and v.stdout == "hi\n"
    assert v.cpu_ms >= 0 and 0 < v.wall_ms < 100 and v.peak_rss_bytes > 1 << 20


def test_feedback_is_deterministic(verifier):
    codes = ["result = [1, 2", "x = {}['k']", "result = {'b', 'a', 'c'}", "raise ValueError(object())"]
    first = [(v.outcome, v.error, v.output) for v in map(lambda c: verifier.verify(c, "?"), codes)]
    again = [(v.outcome, v.error, v.output) for v in map(lambda c: verifier.verify(c, "?"), codes)]
    assert first == again
    assert "0x..." in first[3][1]


# --- the verifier object ---------------------------------------------------------------------------------


def test_verify_is_thread_safe(verifier):
    jobs = [(SEED_SOLUTIONS[i % 8], TASK_BANK[i % 8][1]) for i in range(64)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda job: verifier.verify(*job), jobs))
    assert all(v.outcome is Outcome.CORRECT for v in verdicts)


def test_close_and_reuse_starts_a_new_pool():
    v = CodeVerifier()
    assert v.verify("result = 1", "1").ok
    first = v.sandbox
    v.close()
    assert v.verify("result = 2", "2").ok and v.sandbox is not first
    v.close()


def test_bad_arguments():
    v = CodeVerifier()
    with pytest.raises(TypeError, match="str"):
        v.verify(b"result = 1", "1")
    with pytest.raises(ValueError, match="timeout_ms"):
        v.verify("result = 1", "1", timeout_ms=-5)
    with pytest.raises(ValueError, match="workers"):
        CodeVerifier(workers=0)
    v.close()


def test_parsing_a_candidate_prints_no_warnings():
    # In a fresh interpreter: pytest's own warning capture would hide what a user's log would show.
    code = (
        "from nanocodegen.verifier import CodeVerifier\n"
        "assert CodeVerifier.check_syntax('result = 1if 1 else 2') == (True, 'OK')\n"  # SyntaxWarning
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (0, "")
