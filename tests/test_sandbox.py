"""The sandbox called directly: what runs report, the limits, the pool, the layer switches. (The verifier's
lint would refuse most of these programs; tests/test_hostile.py attacks the isolation itself.)"""

import os
import signal
import threading
import time

import pytest

from nanocodegen import sandbox_os
from nanocodegen.records import Outcome
from nanocodegen.sandbox import OK, Limits, Sandbox, SandboxError
from nanocodegen.sandbox_child import LEN, RESULT_FD, RESULT_MAGIC


@pytest.fixture(scope="module")
def box():
    with Sandbox(workers=1) as sandbox:
        yield sandbox


def run_children(server: int) -> list[int]:
    """The server's children that belong to runs: each leads its own process group. (The zygote, which
    forks them, stays in the server's group; the checker leads its own too, and is left out by name.)"""
    return [pid for pid in own_group_children(server) if comm(pid) != "ncg-checker"]


def checkers(server: int) -> list[int]:
    """The server's checker (sandbox_checker.py), as a list: empty before its first request."""
    return [pid for pid in own_group_children(server) if comm(pid) == "ncg-checker"]


def own_group_children(server: int) -> list[int]:
    with open(f"/proc/{server}/task/{server}/children") as f:
        pids = [int(p) for p in f.read().split()]
    leaders = []
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                leaders.append(pid)
        except ProcessLookupError:
            pass
    return leaders


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def state(pid: int) -> str:
    """The process's state letter from /proc ("S" sleeping, "Z" zombie, ...), "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return ""


def forged_report(output: str) -> bytes:
    body = b"ok\nr\n0\n0\n0\n" + output.encode()
    return RESULT_MAGIC + LEN.pack(len(body)) + body


# --- what a normal run reports ---------------------------------------------------------------------------


def test_result_stdout_and_metrics(box):
    r = box.run("print('hello')\nresult = sum([1, 2, 3, 4, 5])")
    assert (r.status, r.output, r.error, r.has_result) == (OK, "15", "", True)
    assert r.stdout == "hello\n" and r.stderr == ""
    assert r.cpu_ms >= 0 and 0 < r.wall_ms < 100 and r.peak_rss_bytes > 1 << 20


def test_missing_result_is_the_string_none(box):
    r = box.run("x = 1")
    assert (r.status, r.output, r.has_result) == (OK, "None", False)


def test_real_builtins_and_a_fresh_namespace(box):
    r = box.run("import math\nresult = (math.isqrt(17), __name__, sorted(globals()))")
    assert r.output == "(4, '__main__', ['__builtins__', '__name__', 'math'])"


def test_result_is_cut_to_the_limit(box):
    r = box.run("result = 'x' * 20000")
    assert r.ok and len(r.output) == Limits().result_chars and r.truncated


def test_unicode_and_lone_surrogates_survive(box):
    r = box.run("result = 'héllo ✓ \\ud800'")
    assert r.output == "héllo ✓ \ud800"


def test_long_program_passes_through_the_pipe(box):
    code = f"s = '{'x' * 200_000}'\nresult = len(s)"  # more than a pipe buffer holds
    assert box.run(code).output == "200000"


def test_stdin_is_empty(box):
    r = box.run("import sys\nresult = repr(sys.stdin.read())\ninput()")
    assert r.status == Outcome.RUNTIME_ERROR and r.error == "EOFError: EOF when reading a line (line 3)"


# --- failures, one real program each ---------------------------------------------------------------------


def test_runtime_error_names_type_message_and_line(box):
    r = box.run("x = 1\nresult = reslt")
    assert (r.status, r.error) == (Outcome.RUNTIME_ERROR, "NameError: name 'reslt' is not defined (line 2)")


def test_runtime_error_line_is_the_innermost_user_frame(box):
    r = box.run("def f(x):\n    return 1 / x\n\nresult = f(0)")
    assert r.error == "ZeroDivisionError: division by zero (line 2)"


def test_system_exit_and_keyboard_interrupt_are_runtime_errors(box):
    assert box.run("raise SystemExit").error == "SystemExit (line 1)"
    assert box.run("import sys\nsys.exit(3)").error == "SystemExit: 3 (line 2)"
    assert box.run("raise KeyboardInterrupt").status == Outcome.RUNTIME_ERROR


def test_error_text_has_no_addresses_or_host_paths(box):
    r = box.run("raise ValueError(object())")
    assert r.error == "ValueError: <object object at 0x...> (line 1)"
    r = box.run("import os\nraise ValueError(os.getcwd())")
    assert r.error == "ValueError: . (line 2)"


def test_a_raising_str_is_a_runtime_error(box):
    r = box.run("class A:\n    def __str__(self):\n        raise TypeError('no')\nresult = A()")
    assert r.error == "TypeError: no (line 3)"


def test_syntax_error_in_the_sandbox(box):
    r = box.run("result = = 1")
    assert (r.status, r.error) == (Outcome.SYNTAX_ERROR, "invalid syntax (line 1)")
    r = box.run("result = " + "-" * 100_000 + "1")  # the compiler runs out of memory: too deep
    assert (r.status, r.error) == (Outcome.SYNTAX_ERROR, "the program is too large or too deeply nested to compile")


def test_infinite_loop_times_out_in_bounded_time(box):
    t0 = time.perf_counter()
    r = box.run("while True:\n    pass", timeout_ms=100)
    assert (r.status, r.error) == (Outcome.TIMEOUT, "exceeded the time limit of 100 ms")
    assert time.perf_counter() - t0 < 1.0


def test_c_level_loop_times_out(box):
    r = box.run("sum(range(10**15))", timeout_ms=100)
    assert r.status == Outcome.TIMEOUT


def test_ignored_signals_do_not_save_a_loop(box):
    code = (
        "import _signal as signal\n"
        "for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "while True:\n    pass"
    )
    assert box.run(code, timeout_ms=100).status == Outcome.TIMEOUT


def test_time_limit_is_the_programs_own_time(box):
    # 60 ms of work fits a 100 ms budget: fork and set-up happen before the clock starts.
    code = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.06:\n    pass\nresult = 1"
    assert box.run(code, timeout_ms=100).status == OK


def test_memory_bomb_hits_the_memory_limit(box):
    r = box.run("x = bytearray(10**10)")
    assert (r.status, r.error) == (Outcome.MEMORY_LIMIT, "exceeded the memory limit of 256 MiB (line 1)")
    # Growing to the limit takes page faults, not just a request: allow it the time.
    r = box.run("x = [0]\nwhile True:\n    x = x + x", timeout_ms=5000)
    assert r.status == Outcome.MEMORY_LIMIT


def test_print_flood_hits_the_output_limit(box):
    r = box.run("while True:\n    print('x' * 10000)")
    assert (r.status, r.error) == (Outcome.OUTPUT_LIMIT, "printed more than 1 MiB of output")
    assert r.stdout.endswith("x") and len(r.stdout) <= Limits().tail_bytes


def test_stderr_flood_hits_the_output_limit(box):
    r = box.run("import sys\nwhile True:\n    sys.stderr.write('y' * 10000)")
    assert r.status == Outcome.OUTPUT_LIMIT


def test_a_big_file_hits_the_file_size_limit(box):
    r = box.run("with open('big', 'wb') as f:\n    f.write(b'x' * (2 << 20))")
    assert (r.status, r.error) == (Outcome.OUTPUT_LIMIT, "wrote a file larger than 1 MiB")


def test_silent_exit_is_a_crash(box):
    r = box.run("import os\nos._exit(0)")
    assert (r.status, r.error) == (Outcome.CRASHED, "the process exited early with status 0")
    assert box.run("import os\nos._exit(3)").error == "the process exited early with status 3"


def test_segfault_is_a_crash(box):
    r = box.run("import ctypes\nctypes.string_at(0)")
    assert (r.status, r.error) == (Outcome.CRASHED, "the process was killed by signal SIGSEGV")


def test_result_cannot_be_forged_by_printing(box):
    code = f"import os, sys\nsys.stdout.buffer.write({forged_report('15')!r})\nsys.stdout.flush()\n"
    r = box.run(code + "os._exit(0)")
    assert r.status == Outcome.CRASHED and r.output is None


def test_a_forged_report_is_only_a_claimed_output(box):
    # A program that finds the result fd can claim an output, which `result = ...` gives it anyway; it
    # cannot turn its loop into anything but a stopped process: the server kills it on the report.
    code = f"import os\nos.write({RESULT_FD}, {forged_report('15')!r})\nwhile True:\n    pass"
    t0 = time.perf_counter()
    r = box.run(code, timeout_ms=2000)
    assert (r.status, r.output) == (OK, "15") and time.perf_counter() - t0 < 1.0
    assert box.run(f"import os\nos.write({RESULT_FD}, b'garbage')\nos._exit(0)").status == Outcome.CRASHED


# --- isolation -----------------------------------------------------------------------------------------


def test_private_empty_working_dir_removed_after_the_run(box):
    r = box.run("import os\nopen('f', 'w').write('x')\nresult = (os.getcwd(), sorted(os.listdir('.')))")
    cwd, listing = eval(r.output)  # noqa: S307 - our own repr of a tuple of str
    assert listing == ["f"] and cwd != os.getcwd()
    deadline = time.monotonic() + 3  # the server cleans up just after it replies
    while os.path.exists(cwd) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(cwd)


def test_host_process_is_unaffected(box, tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("keep")
    cwd, env = os.getcwd(), dict(os.environ)
    code = (
        "import os\n"
        "os.chdir('/')\n"
        "os.environ['NCG_SANDBOX_TEST'] = '1'\n"
        f"try:\n    os.remove({str(sentinel)!r})\nexcept OSError:\n    pass\n"
        "result = 1"
    )
    assert box.run(code).ok
    assert os.getcwd() == cwd and dict(os.environ) == env
    if box.features["fs_write_confined"]:
        assert sentinel.read_text() == "keep"


def test_writing_outside_the_private_dir_fails(box, tmp_path):
    if not box.features["fs_write_confined"]:
        pytest.skip("this kernel has no Landlock: writes are confined only by file permissions")
    target = tmp_path / "escape"
    r = box.run(f"open({str(target)!r}, 'w').write('x')")
    assert r.status == Outcome.RUNTIME_ERROR and r.error.startswith("PermissionError")
    assert not target.exists()
    assert box.run("import os\nos.mkdir('/tmp/ncg-escape-dir')").status == Outcome.RUNTIME_ERROR


def test_escaped_grandchild_is_killed_where_fork_is_open(wait_gone):
    # Only without the seccomp filter can a program fork (and as root, which RLIMIT_NPROC does not bind):
    # then the server's sweep must catch a grandchild that left the process group.
    with Sandbox(allow_weak_isolation=True, disable_layers=("seccomp",)) as sandbox:
        code = (
            "import os, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.setsid()\n"
            "    time.sleep(30)\n"
            "    os._exit(0)\n"
            "result = pid"
        )
        r = sandbox.run(code)
        if sandbox.features["processes_blocked"]:  # not root: RLIMIT_NPROC still refuses the fork
            assert r.status == Outcome.RUNTIME_ERROR and "Error" in r.error
            return
        assert r.ok
        assert wait_gone(int(r.output)), "a grandchild that left the process group outlived its run"


def test_a_run_after_hostile_runs_is_still_correct(box):
    for code in ("import os\nos._exit(0)", "x = bytearray(10**10)", "while True:\n    print('x' * 10000)"):
        box.run(code)
    r = box.run("result = 'still fine'")
    assert (r.status, r.output) == (OK, "still fine")


# --- the pool --------------------------------------------------------------------------------------------


def test_pool_recovers_from_a_killed_server():
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run("result = 1").ok
        (server,) = sandbox._servers
        pid = server.proc.pid
        os.kill(pid, signal.SIGKILL)
        server.proc.wait(timeout=5)
        r = sandbox.run("result = 2")
        assert (r.status, r.output) == (OK, "2")
        assert sandbox.server_pids() and sandbox.server_pids() != [pid]


def test_workers_run_in_parallel():
    with Sandbox(workers=2) as sandbox:
        sandbox.run("result = 0")
        sandbox.run("result = 0")
        results = []

        def job():
            results.append(sandbox.run("import time\ntime.sleep(0.3)\nresult = 1", timeout_ms=2000))

        threads = [threading.Thread(target=job) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.perf_counter() - t0 < 0.55
        assert [r.output for r in results] == ["1", "1"]


def test_close_stops_servers_and_removes_files(wait_gone):
    sandbox = Sandbox(workers=2)
    sandbox.run("result = 1")
    pids = sandbox.server_pids()
    base_dirs = [s.base_dir for s in sandbox._servers]
    sandbox.close()
    assert all(wait_gone(pid) for pid in pids)
    assert not any(os.path.exists(d) for d in base_dirs)
    with pytest.raises(SandboxError, match="closed"):
        sandbox.run("result = 1")


def test_server_never_loads_torch_even_from_a_torch_process():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    torch.ones(1000).sum()  # the caller has torch loaded and its threads started
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run("result = 3").output == "3"
        (pid,) = sandbox.server_pids()
        with open(f"/proc/{pid}/maps") as f:
            assert "torch" not in f.read()


def test_bad_arguments_are_refused(box):
    with pytest.raises(ValueError, match="timeout_ms"):
        box.run("result = 1", timeout_ms=0)
    with pytest.raises(TypeError, match="str"):
        box.run(b"result = 1")
    with pytest.raises(ValueError, match="code_chars"):
        box.run("x" * (Limits().code_chars + 1))
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)


def test_a_forked_caller_gets_its_own_server(box):
    assert box.run("result = 1").ok
    parent_pids = box.server_pids()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork uses (and at exit closes) its own server, never the parent's
        try:
            ok = box.run("result = 5").output == "5" and box.server_pids() != parent_pids
            box.close()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.close(w)
    assert box.server_pids() == parent_pids and box.run("result = 6").output == "6"


def zygote_of(server: int) -> int:
    """The server's zygote: the oldest of its children in the server's process group (a child just forked
    is there too, until it moves to its own group)."""
    with open(f"/proc/{server}/task/{server}/children") as f:
        pids = [int(p) for p in f.read().split()]
    group, candidates = os.getpgid(server), []
    for pid in pids:
        try:
            if os.getpgid(pid) == group:
                candidates.append((start_time(pid), pid))
        except (ProcessLookupError, FileNotFoundError):  # a child that exited since the listing
            continue
    return min(candidates)[1]


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime


def test_children_are_forked_by_the_zygote_yet_are_the_servers():
    with Sandbox(workers=1) as sandbox:
        r = sandbox.run("import os\nresult = (os.getppid(), os.getpid() == os.getpgid(0))")
        (server,) = sandbox.server_pids()
        zygote = zygote_of(server)
        # The run's parent is the server (it reaps it and sees its exit status), not the zygote that forked it.
        assert eval(r.output) == (server, True)  # noqa: S307 - our own repr of a tuple
        with open(f"/proc/{zygote}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == server  # the zygote's parent
        # A crash is seen through the server's wait4, as before: the exit status and the signal.
        assert sandbox.run("import os\nos._exit(3)").error == "the process exited early with status 3"
        r = sandbox.run("import ctypes\nctypes.string_at(0)")
        assert (r.status, r.error) == (Outcome.CRASHED, "the process was killed by signal SIGSEGV")


def test_the_zygote_holds_no_socket_and_no_run_descriptors():
    with Sandbox(workers=1) as sandbox:
        for _ in range(3):
            assert sandbox.run("result = 1").ok
        zygote = zygote_of(sandbox.server_pids()[0])
        targets = []
        for fd in os.listdir(f"/proc/{zygote}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{zygote}/fd/{fd}"))
            except FileNotFoundError:  # closed since the listing: the server may order a spare after a reply
                pass
        # stdio, its two pipes to the server, the last child's five server ends (until its next order) and
        # the run directories' Landlock rulesets: never the client's socket.
        assert not [t for t in targets if t.startswith("socket:")], targets
        assert len(targets) <= 3 + 2 + 5 + 8, targets


def test_pool_survives_its_zygote_being_killed():
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run("result = 1", policy="tests").ok  # preloaded: the zygote is the one it will keep
        (server,) = sandbox.server_pids()
        for _ in range(2):  # the spare was forked already; the zygote is missed on the run after
            os.kill(zygote_of(server), signal.SIGKILL)
            for i in range(3):
                r = sandbox.run(f"result = {i}", policy="tests")
                assert (r.status, r.output) == (OK, str(i))
        assert sandbox.server_pids() == [server]
        zygote_of(server)  # a new one


def test_each_run_draws_its_own_random_numbers(box):
    # Children are forked with Python's after-fork hooks, as os.fork does: random reseeds in each.
    draws = {box.run("import random\nresult = random.random()", policy="tests").output for _ in range(4)}
    assert len(draws) == 4


def test_imports_find_only_what_the_server_loaded_even_without_landlock():
    # The zygote seals imports once for all its children; Landlock is not what stops this one.
    with Sandbox(allow_weak_isolation=True, disable_layers=("landlock",)) as sandbox:
        for _ in range(2):
            r = sandbox.run("import csv\nresult = 1")
            assert r.error == "ModuleNotFoundError: No module named 'csv' (line 1)", r


def test_preloading_forks_a_new_zygote():
    # The modules come in with the first job that may import them; a zygote forked before would lack them.
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run("result = 1", policy="task").ok
        (server,) = sandbox.server_pids()
        before = zygote_of(server)
        assert sandbox.run("import fractions\nresult = fractions.Fraction(1, 3)", policy="tests").output == "1/3"
        assert zygote_of(server) != before


def test_pool_survives_its_waiting_child_being_killed():
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run("result = 1").ok
        (server,) = sandbox.server_pids()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # until the used child is reaped and only spares are left
            children = run_children(server)
            if children and all(state(pid) == "S" for pid in children):  # asleep, waiting for a request
                break
        for spare in children:  # the children forked for the next requests (one, or two back to back)
            os.kill(spare, signal.SIGKILL)
        for spare in children:
            while state(spare) != "Z":  # dead, not yet reaped
                time.sleep(0.001)
        r = sandbox.run("result = 2")
        assert (r.status, r.output) == (OK, "2") and sandbox.server_pids() == [server]


def test_home_and_tmpdir_are_the_private_dir(box):
    code = "import os\nresult = [os.path.realpath(os.environ[k]) == os.getcwd() for k in ('HOME', 'TMPDIR')]"
    assert box.run(code).output == "[True, True]"


# --- layers --------------------------------------------------------------------------------------------


def test_every_layer_is_active_here(box):
    # This suite's machines have Landlock and seccomp; on one without, this names the layer that is missing.
    isolation = box.isolation
    assert isolation["complete"], isolation["missing"]
    assert isolation["layers"]["landlock_abi"] >= 1 and isolation["layers"]["seccomp_filter"]


@pytest.mark.parametrize("layer", ["landlock", "seccomp"])
def test_a_missing_layer_needs_the_explicit_flag(layer):
    with Sandbox(disable_layers=(layer,)) as sandbox:
        with pytest.raises(SandboxError, match="allow_weak_isolation"):
            sandbox.run("result = 1")
        assert sandbox.isolation["missing"] and not sandbox.isolation["allow_weak_isolation"]
    with Sandbox(allow_weak_isolation=True, disable_layers=(layer,)) as sandbox:
        assert sandbox.run("result = 1").output == "1"
        isolation = sandbox.isolation
        assert isolation["allow_weak_isolation"] and not isolation["complete"]
        assert isolation["layers"]["disabled"] == [layer]


def test_without_landlock_reads_are_open_and_with_it_closed(box, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    code = f"result = open({str(secret)!r}).read()"
    assert box.run(code).status == Outcome.RUNTIME_ERROR
    with Sandbox(allow_weak_isolation=True, disable_layers=("landlock",)) as weak:
        assert weak.run(code).output == "s3cret"  # the layer is what stops it


# --- jobs: policies, checks, tests --------------------------------------------------------------------


def test_policies_and_checks_run_in_the_child(box):
    assert box.check("return 1").error == "'return' outside function (line 1)"
    assert (box.check("import os", policy="task").status, box.check("x = 1", policy="task").status) == (
        Outcome.UNSAFE, OK)  # fmt: skip
    r = box.run("import os\nresult = 1", policy="tests")
    assert (r.status, r.error, r.wall_ms) == (Outcome.UNSAFE, "module os is not available (line 1)", 0.0)
    assert box.run("import math\nresult = math.floor(2.5)", policy="tests").output == "2"
    with pytest.raises(ValueError, match="policy"):
        box.run("x = 1", policy="strict")


def test_run_tests_in_the_sandbox(box):
    test = "def check(candidate):\n    assert candidate(2) == 4\n"
    assert box.run_tests("def sq(x):\n    return x * x\n", test, "sq").status == OK
    r = box.run_tests("def sq(x):\n    return x + x + 1\n", test, "sq")
    assert (r.status, r.error, r.output) == (Outcome.WRONG_OUTPUT, "failed the test on line 2", None)
    assert box.run_tests("def sq(x):\n    return x + x\n", test, "sq").status == OK  # the tests' weakness


def test_modules_are_loaded_only_for_jobs_that_may_import():
    def maps(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()

    with Sandbox() as sandbox:
        assert sandbox.run("result = 1", policy="task").ok
        (pid,) = sandbox.server_pids()
        assert "_hashlib" not in maps(pid)  # the sketch's tasks cannot import: their server stays small
        assert sandbox.run("import hashlib\nresult = hashlib.md5(b'').hexdigest()[:4]", policy="tests").output == "d41d"
        assert "_hashlib" in maps(pid) and sandbox.server_pids() == [pid]


def test_reused_run_dirs_start_empty_and_dirty_ones_are_replaced(box):
    # Back to back, as a benchmark calls it: clean directories are reused, ones a program wrote to are not.
    writes = "import os\nseen = sorted(os.listdir('.'))\nopen('f', 'w').write('x')\nresult = (os.getcwd(), seen)"
    reads = "import os\nresult = (os.getcwd(), sorted(os.listdir('.')))"
    dirty, clean = set(), []
    for i in range(12):
        cwd, seen = eval(box.run(writes if i % 3 == 0 else reads, policy="").output)  # noqa: S307 - our repr
        assert seen == []  # every run starts in an empty directory, reused or not
        assert cwd not in dirty  # a directory that held a file is never handed out again
        if i % 3 == 0:
            dirty.add(cwd)
        else:
            clean.append(cwd)
    assert len(set(clean)) < len(clean)  # directories left clean were reused


def test_a_run_dir_the_program_locked_is_not_reused():
    # Without seccomp a program can chmod its directory; the server then replaces it rather than reuse it.
    with Sandbox(workers=1, disable_layers=("seccomp",), allow_weak_isolation=True) as sandbox:
        locked = sandbox.run("import os\nos.chmod('.', 0o500)\nresult = os.getcwd()").output
        for _ in range(6):
            r = sandbox.run("import os\nopen('g', 'w').write('y')\nresult = (os.getcwd(), sorted(os.listdir('.')))")
            cwd, listing = eval(r.output)  # noqa: S307 - our own repr of a tuple
            assert cwd != locked and listing == ["g"]


def test_back_to_back_runs_are_reaped_once_the_caller_pauses(box):
    for _ in range(5):
        assert box.run("result = 1").ok
    (server,) = box.server_pids()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the last used child is reaped in the caller's gap
        children = run_children(server)
        # Only spares (back to back, up to two are kept), asleep, waiting for a request.
        if 1 <= len(children) <= 2 and all(state(pid) == "S" for pid in children):
            break
        time.sleep(0.01)
    assert 1 <= len(children) <= 2 and all(state(pid) == "S" for pid in children), children


def test_the_warm_up_programs_pass_the_lint_and_their_test():
    # A warm-up that failed part-way would warm only part of the job's path.
    import _ast

    from nanocodegen import sandbox_child as child
    from nanocodegen.sandbox_lint import check

    code = child._WARM_UP_TESTED_CODE
    tree = compile(code, child.FILENAME, "exec", _ast.PyCF_ONLY_AST)
    assert check(code, tree, "tests", child.AVAILABLE_MODULES) == ""
    program = compile(code, child.FILENAME, "exec")
    test = compile(child._WARM_UP_TEST, child.TEST_FILENAME, "exec")
    assert child._execute(program, test, "f", "", child._WARM_UP_LIMITS) == (OK, "", "")
    child.warm_up()  # both programs, every step, raises nothing


def test_the_report_is_a_frame_the_server_accepts():
    import resource

    from nanocodegen import sandbox_child as child
    from nanocodegen.sandbox_server import _parse_frame

    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    sum(range(10**5))
    frame = child._report(OK, "45 é", "r", [], time.perf_counter, resource.getrusage, resource.RUSAGE_SELF,
                          start, before)  # fmt: skip
    report = _parse_frame(frame)
    assert report["status"] == OK and report["output"] == "45 é" and report["has_result"]
    assert report["wall_ms"] > 0 and report["peak_rss_bytes"] > 0


def test_the_type_cache_warm_up_covers_every_function_the_child_calls_on_sandbox_os():
    # warm_type_cache looks up the names of the functions in _child_path(); one the child's path calls but
    # that list misses would leave its lookups to miss in every child.
    from nanocodegen import sandbox_child as child

    path = set(child._child_path())
    for function in (child.child_main, child.set_up_child, child._run_job):
        for name in function.__code__.co_names:
            target = getattr(sandbox_os, name, None)
            if callable(target) and getattr(target, "__module__", "") == sandbox_os.__name__:
                assert target in path, f"{function.__name__} calls sandbox_os.{name}, missing from _child_path()"
    child.warm_type_cache()  # every name in them, raises nothing


def wait_for_run_children(server: int, n: int) -> list[int]:
    deadline = time.monotonic() + 10
    while len(children := run_children(server)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return children


def test_prefork_spares_wait_at_idle_priority_and_the_burst_runs_in_them():
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run("result = 1").ok  # up, with its checker and one spare
        (server,) = sandbox.server_pids()
        assert sandbox.prefork(5) == 5
        spares = wait_for_run_children(server, 5)
        assert len(spares) == 5
        if sandbox_os.idle_priority_reversible():  # the four forked for the prefork, not the one before
            assert sum(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in spares) >= 4
        ran = []
        for _ in range(5):
            result = sandbox.run("import os\nprint(os.getpid(), os.sched_getscheduler(0))", 2000)
            pid, policy = map(int, result.stdout.split())
            assert policy == os.SCHED_OTHER  # taken out of SCHED_IDLE once the burst began
            ran.append(pid)
        assert sorted(ran) == sorted(spares)
        for _ in range(5):  # then one child at a time again, as before the prefork
            assert sandbox.run("result = 1").ok
        assert len(run_children(server)) <= 2


def test_prefork_is_capped_split_across_servers_and_stops_at_the_next_request():
    from nanocodegen.sandbox_server import MAX_SPARES

    with Sandbox(workers=2) as sandbox:
        assert sandbox.prefork(3) == 3  # 2 + 1
        assert sandbox.prefork(10**6) == 2 * MAX_SPARES
        result = sandbox.run("print(6 * 7)", 2000)  # served while the spares are being forked
        assert result.ok and result.stdout == "42\n"
        with pytest.raises(ValueError, match="at least 0"):
            sandbox.prefork(-1)


def test_a_program_cannot_change_its_scheduling(box):
    # The server may (prefork's SCHED_IDLE); a program may not, neither for itself nor for another process.
    result = box.run("import os\nout = []\nfor pid in (0, os.getppid()):\n    try:\n"
                     "        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))\n"
                     "        out.append('changed')\n    except OSError as e:\n        out.append(e.errno)\n"
                     "result = out", 2000)  # fmt: skip
    assert result.ok and result.output == "[1, 1]", result  # EPERM twice
