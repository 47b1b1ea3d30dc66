"""The checker: check_source and its wire here; the long-lived confined process through a real Sandbox."""

import marshal
import os
import signal
import time

import pytest

from nanocodegen.records import Outcome
from nanocodegen.sandbox import OK, Limits, Sandbox
from nanocodegen.sandbox_checker import check_source, parse_reply
from nanocodegen.sandbox_child import LEN, RESULT_MAGIC
from tests.test_sandbox import checkers, comm, run_children, state

BOMB = "-" * 100_000 + "1"  # the compiler runs out of memory on it: a check that leaves the checker unclean


def test_check_source_returns_the_compiled_program_or_the_feedback():
    status, payload, clean = check_source("result = 6 * 7", "task")
    namespace: dict = {}
    exec(marshal.loads(payload), namespace)
    assert (status, clean, namespace["result"]) == (OK, True, 42)
    assert check_source("def f(:", "task") == ("syntax_error", b"invalid syntax (line 1)", True)
    assert check_source("import os", "task") == ("unsafe", b"import statements are not allowed (line 1)", True)
    assert check_source("import math", "tests")[0] == OK
    assert check_source("import math", "")[0] == OK  # no policy: compile only


def test_only_a_syntax_error_leaves_the_checker_clean():
    assert check_source("(" * 300 + ")" * 300, "task")[::2] == ("syntax_error", True)  # the parser's own limit
    assert check_source(BOMB, "task") == ("syntax_error", b"the program is too large or too deeply nested to compile",
                                          False)  # fmt: skip
    assert check_source('x = "\ud800"', "task") == ("syntax_error", b"the program is not valid UTF-8", False)


def _frame(body: bytes) -> bytes:
    return RESULT_MAGIC + LEN.pack(len(body)) + body


def test_parse_reply_accepts_only_well_formed_frames():
    assert parse_reply(_frame(b"ok\n12\n1\n\x00code")) == ("ok", 12, True, b"\x00code")
    assert parse_reply(_frame(b"unsafe\n12\n0\nimport statements are not allowed")) == (
        "unsafe", 12, False, b"import statements are not allowed")  # fmt: skip
    for bad in (b"ok\n12\n1", b"ok\nx\n1\n", b"ok\n12\n2\n", b"timeout\n12\n1\n", b"\xff\n1\n1\n"):
        assert parse_reply(_frame(bad)) is None, bad
    assert parse_reply(_frame(b"ok\n12\n1\n") + b"extra") is None
    assert parse_reply(b"NCG0\n" + _frame(b"ok\n12\n1\n")[5:]) is None
    assert parse_reply(_frame(b"ok\n12\n1\n")[:7]) is None  # cut inside the length


@pytest.fixture
def box():
    with Sandbox(workers=1) as sandbox:
        yield sandbox


def _checker(sandbox: Sandbox) -> int:
    """The pool's checker; a check-only request always goes through it, so one exists after this."""
    assert sandbox.check("x = 0").ok
    (server,) = sandbox.server_pids()
    (checker,) = checkers(server)
    return checker


def _wakeups(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])


def test_one_checker_checks_request_after_request_confined_like_a_run(box):
    checker = _checker(box)
    assert box.check("import os", policy="task").status == Outcome.UNSAFE
    assert box.check("x = (").status == Outcome.SYNTAX_ERROR
    for i in range(4):
        assert box.run(f"result = {i}", policy="task").output == str(i)
    assert _checker(box) == checker  # the same process all along
    with open(f"/proc/{checker}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert comm(checker) == "ncg-checker" and checker not in run_children(box.server_pids()[0])


def test_every_request_is_checked_by_the_checker_gaps_or_not(box):
    checker = _checker(box)
    before = _wakeups(checker)
    for i in range(3):
        time.sleep(0.02)  # the model generates
        assert box.run(f"result = {i}").output == str(i)
        assert box.run("import os", policy="task").error == "import statements are not allowed (line 1)"
    # Woken for each (children never parse: their pages stay shared); a wake-up that finds the next request
    # already waiting is not counted as one, hence not exactly 6.
    assert _wakeups(checker) >= before + 4


def test_a_bomb_costs_the_checker_its_life_and_the_next_check_gets_a_fresh_one(box):
    before = _checker(box)
    r = box.check(BOMB)
    assert (r.status, r.error) == (Outcome.SYNTAX_ERROR, "the program is too large or too deeply nested to compile")
    assert box.run("result = 2").output == "2"
    assert _checker(box) != before


def test_a_checker_killed_from_outside_is_replaced(box):
    checker = _checker(box)
    os.kill(checker, signal.SIGKILL)
    while state(checker) != "Z":  # dead, not yet reaped (a checker killed during a check costs that check)
        time.sleep(0.001)
    assert box.check("x = 1").ok and box.run("result = 2").output == "2"
    assert _checker(box) != checker


def test_a_program_cannot_signal_the_checker(box):
    checker = _checker(box)
    r = box.run(f"import posix\nposix.kill({checker}, 9)\nresult = 1")  # no policy: the OS layer decides
    assert r.status == Outcome.RUNTIME_ERROR and r.error.startswith("PermissionError"), r
    assert _checker(box) == checker and box.run("result = 3").output == "3"


def test_compiler_warnings_reach_the_runs_stderr(box):
    code = "x = 1\nresult = x is 1"
    for _ in range(2):  # whichever checked it, the warning comes with the run
        r = box.run(code)
        assert (r.status, r.output) == (OK, "True") and "SyntaxWarning" in r.stderr
    assert "SyntaxWarning" in box.check(code).stderr
    assert box.run("result = 1").stderr == "" and box.check("x = 1").stderr == ""  # drained: no later run sees it


def test_a_flood_of_compiler_warnings_is_an_output_flood(box):
    r = box.check("x = 1\n" + "y = x is 1\n" * 30_000)  # ~2 MiB of SyntaxWarnings against a 1 MiB cap
    assert (r.status, r.error) == (Outcome.OUTPUT_LIMIT, "printed more than 1 MiB of output")
    assert "SyntaxWarning" in r.stderr and box.run("result = 1").output == "1"


def test_a_check_that_overruns_the_time_limit_kills_the_checker(tmp_path):
    # Through the server itself (as Server.serve calls it), which decides the checker's path here.
    from nanocodegen import sandbox_server

    # This process has torch loaded: far more address space than Limits' 256 MiB, which a fork keeps.
    limits = {**Limits().__dict__, "memory_bytes": 1 << 40}
    server = sandbox_server.Server(str(tmp_path), limits, {"landlock_abi": 0})
    job = {"code": "x = 1\n" * 100_000, "policy": "", "check_only": False, "test": None, "entry_point": ""}
    try:
        r = server.check({"job": job, "timeout_ms": 1}, time.perf_counter())  # ~600 KB: far more than 1 ms
        assert (r["status"], r["error"], r["cpu_ms"]) == (Outcome.TIMEOUT, "exceeded the time limit of 1 ms", 0.0)
        assert server.checker is None
        checked = server.check({"job": {**job, "code": "result = 1"}, "timeout_ms": 1000}, time.perf_counter())
        assert marshal.loads(checked["program"]).co_filename == "<code>" and server.checker is not None
    finally:
        server.retire_checker()
        server.stop_zygote()
