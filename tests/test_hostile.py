"""Hostile programs, one or more per category of attack, against both layers that matter.

Each case runs on the raw sandbox (no lint: the OS layer alone must hold) and must be contained: a clear
outcome, the host's secret file, environment variable and /proc entries unread, nothing written to a
world-writable canary directory, the sandbox server alive, and the next run correct. Escapes that the
lint knows are also checked through the verifier, for the message the model would see.
"""

import os
import time

import pytest

from nanocodegen.records import Outcome
from nanocodegen.sandbox import OK, Sandbox
from nanocodegen.sandbox_child import LEN, RESULT_FD, RESULT_MAGIC
from nanocodegen.verifier import CodeVerifier

SECRET_TEXT = "hunter2-file"


def short(value) -> str:
    """A test id: the start of a program, on one line."""
    return repr(value)[:40] if isinstance(value, str) else str(value)

SECRET_ENV = "hunter2-env"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """What a program must not reach: a readable secret file, a writable canary dir, a secret env var."""
    root = tmp_path_factory.mktemp("host")
    secret = root / "secret.txt"
    secret.write_text(SECRET_TEXT)
    canary = root / "canary"
    canary.mkdir()
    canary.chmod(0o777)
    os.environ["NCG_HOSTILE_SECRET"] = SECRET_ENV  # before the servers start, so they could inherit it
    yield {"secret": str(secret), "canary": str(canary)}
    os.environ.pop("NCG_HOSTILE_SECRET", None)


@pytest.fixture(scope="module")
def box(host):
    with Sandbox(workers=1) as sandbox:
        assert sandbox.isolation["complete"], sandbox.isolation["missing"]
        yield sandbox


@pytest.fixture(scope="module")
def verifier(host):
    with CodeVerifier() as v:
        yield v


def attack(box, host, code: str, timeout_ms: int = 1000, policy: str = ""):
    """Run `code` (SECRET and CANARY are defined for it) and check that it was contained."""
    servers = box.server_pids()
    prelude = f"SECRET = {host['secret']!r}\nCANARY = {host['canary']!r}\nPID = {os.getpid()}\n"
    r = box.run(prelude + code, timeout_ms=timeout_ms, policy=policy)
    seen = f"{r.output} {r.error} {r.stdout} {r.stderr}"
    assert SECRET_TEXT not in seen and SECRET_ENV not in seen, f"leaked: {seen[:300]}"
    assert os.listdir(host["canary"]) == [], "the program wrote outside its directory"
    with open(host["secret"]) as f:
        assert f.read() == SECRET_TEXT
    assert box.server_pids() == servers, "the program killed its server"
    after = box.run("result = 6 * 7")
    assert (after.status, after.output) == (OK, "42"), "the next run was affected"
    return r


# What a program that escaped to the `os` module (os_) tries; each attempt records what stopped it.
PAYLOAD = """
def attempt(f):
    try:
        return repr(f())
    except BaseException as e:
        return type(e).__name__
import ctypes as _ct
_libc = _ct.CDLL(None, use_errno=True)
result = [
    attempt(lambda: os_.read(os_.open(SECRET, os_.O_RDONLY), 100)),
    attempt(lambda: os_.open(CANARY + "/pwned", os_.O_WRONLY | os_.O_CREAT)),
    attempt(os_.fork),
    attempt(lambda: _libc.socket(2, 2, 0) if _libc.socket(2, 2, 0) < 0 else "socket"),
]
"""
CONTAINED = "['PermissionError', 'PermissionError', 'PermissionError', '-1']"

ESCAPES = {
    "subclasses": (
        "for c in ().__class__.__base__.__subclasses__():\n"
        "    if c.__name__ == '_wrap_close':\n"
        "        os_ = c.__init__.__globals__['sys'].modules['os']\n",
        "attribute __class__ is not allowed (line 4)",
    ),
    "builtin __self__": (
        "os_ = sum.__self__.__import__('os')\n",
        "attribute __self__ is not allowed (line 4)",
    ),
    "__reduce_ex__": (
        "newobj = (1).__reduce_ex__(2)[0]\nos_ = newobj.__globals__['__builtins__']['__import__']('os')\n",
        "attribute __reduce_ex__ is not allowed (line 4)",
    ),
    "function globals": (
        "def f():\n    pass\nos_ = f.__globals__['__builtins__'].__import__('os')\n",
        "attribute __globals__ is not allowed (line 6)",
    ),
    "generator frame": (
        "def g():\n    yield gens[0].gi_frame.f_back.f_back.f_globals\n"
        "gens = [None]\ngens[0] = g()\nos_ = next(gens[0])['os']\n",
        "attribute gi_frame is not allowed (line 5)",
    ),
    "traceback frame": (
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    tb = e.__traceback__\n"
        "os_ = tb.tb_frame.f_back.f_globals['os']\n",
        "attribute __traceback__ is not allowed (line 7)",
    ),
    "decorators": (  # eval and a format method called without a call node naming them
        "@eval\n@'__import__(\"os\")'.format\nclass os_:\n    pass\n",
        "eval() is not allowed (line 4)",
    ),
}


@pytest.mark.parametrize("name", ESCAPES)
def test_escapes_to_os_are_contained_by_the_os_layer(box, host, name):
    r = attack(box, host, ESCAPES[name][0] + PAYLOAD)
    assert (r.status, r.output) == (OK, CONTAINED), (r.status, r.output, r.error)


@pytest.mark.parametrize("name", ESCAPES)
def test_escapes_are_refused_by_the_lint_with_a_clear_message(verifier, name):
    code = "SECRET = 's'\nCANARY = 'c'\nPID = 1\n" + ESCAPES[name][0] + PAYLOAD
    verdict = verifier.verify(code, "x")
    assert (verdict.outcome, verdict.error) == (Outcome.UNSAFE, ESCAPES[name][1])


def test_a_lint_bypass_under_the_tests_policy_is_still_contained(box, host):
    # The tests policy allows eval (HumanEval needs it), so a string reaches __import__ past the lint.
    r = attack(box, host, ESCAPES["decorators"][0] + "result = os_.listdir('/')", policy="tests")
    assert (r.status, r.error) == (Outcome.RUNTIME_ERROR, "PermissionError: [Errno 13] Permission denied: '/' (line 8)")


def test_format_strings_read_no_secrets(box, host, verifier):
    code = "import random\nresult = '{0.Random.__init__.__globals__[_os].environ}'.format(random)\n"
    r = attack(box, host, code)
    assert r.ok and "PYTHONHASHSEED" in r.output  # it walked there: the environment is the sandbox's own
    assert verifier.verify("result = '{0.__class__.__base__}'.format(1)", "x").error == (
        "attribute __class__ is not allowed in a format string (line 1)"
    )


def test_unicode_normalized_identifiers_are_linted_as_what_they_run_as(verifier, box, host):
    assert verifier.verify("result = ｅｖａｌ('1')", "1").error == "eval() is not allowed (line 1)"
    assert verifier.verify("result = __ｂｕｉｌｔｉｎｓ__", "1").error == "name __builtins__ is not allowed (line 1)"
    assert verifier.verify("result = ().__ｃｌａｓｓ__", "1").error == "attribute __class__ is not allowed (line 1)"
    assert attack(box, host, "result = ｅｖａｌ('6 * 7')").output == "42"


def test_coding_cookies_change_nothing(verifier, box, host):
    # In UTF-7, "+AAo-" is a newline: read with the cookie, the comment would hide a second line of code.
    code = "# -*- coding: utf-7 -*-\nresult = 'plain' #+AAo-result = open(SECRET).read()\n"
    assert verifier.verify(code, "plain").error == "coding declarations other than utf-8 are not allowed (line 1)"
    assert attack(box, host, code).output == "plain"  # the program is read as UTF-8, always
    assert verifier.verify("# coding: utf-8\nresult = 1", "1").outcome is Outcome.CORRECT


# --- the host: files, environment, other processes --------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "result = open(SECRET).read()",
        "result = open('/etc/passwd').read()",
        "result = open('/etc/hostname').read()",
        "import os\nresult = os.listdir('/')",
        "import os\nresult = os.listdir(CANARY)",
        "import os\nresult = open('/proc/1/environ', 'rb').read()",
        "import os\nresult = open(f'/proc/{PID}/cmdline', 'rb').read()",
        "import os\nresult = open(f'/proc/{os.getppid()}/environ', 'rb').read()",
        "import os\nresult = open('/proc/self/environ', 'rb').read()",
        "import os\nresult = os.readlink(f'/proc/{PID}/cwd')",
        "import os\nos.symlink(SECRET, 'link')\nresult = open('link').read()",
        "import os\nos.link(SECRET, 'hard')\nresult = open('hard').read()",
    ],
    ids=short,
)
def test_host_files_and_other_processes_are_unreadable(box, host, code):
    r = attack(box, host, code)
    assert r.status == Outcome.RUNTIME_ERROR and r.error.startswith("PermissionError"), r.error


def test_the_environment_is_the_sandboxs_own(box, host):
    r = attack(box, host, "import os\nresult = sorted(os.environ)")
    # LC_CTYPE appears where Python coerces a C locale to UTF-8 (PEP 538).
    assert set(eval(r.output)) <= {"HOME", "PATH", "PYTHONHASHSEED", "TMPDIR", "TZ", "LC_CTYPE"}, r.output


@pytest.mark.parametrize(
    "code",
    [
        "open(CANARY + '/pwned', 'w').write('x')",
        "import os\nos.mkdir(CANARY + '/dir')",
        "import os\nos.rename('.', CANARY + '/moved')",
        "open('/tmp/ncg-hostile-pwned', 'w').write('x')",
        "import os\nos.chmod(SECRET, 0o777)",
        "import os\nos.chmod(0, 0o777)",  # fd 0 is the host's /dev/null
        "import os\nos.truncate(SECRET, 0)",
        "import os\nos.utime(SECRET, (0, 0))",
    ],
    ids=short,
)
def test_writing_outside_the_private_dir_fails(box, host, code):
    before = os.stat(host["secret"])
    r = attack(box, host, code)
    assert r.status == Outcome.RUNTIME_ERROR and r.error.startswith(("PermissionError", "OSError")), r.error
    assert not os.path.exists("/tmp/ncg-hostile-pwned")
    after = os.stat(host["secret"])
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


# --- sockets, processes, signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("family, kind", [(2, 1), (2, 2), (10, 1), (1, 1), (16, 3)])  # TCP, UDP, v6, unix, netlink
def test_no_sockets_of_any_kind(box, host, family, kind):
    code = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    code += f"result = (libc.socket({family}, {kind}, 0), ctypes.get_errno())"
    assert attack(box, host, code).output == "(-1, 1)"  # EPERM
    r = attack(box, host, "import socket")
    assert r.error == "ModuleNotFoundError: No module named 'socket' (line 4)"


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.fork()",
        "import os\nos.execv('/bin/sh', ['sh'])",
        "import os\nos.posix_spawn('/bin/sh', ['sh'], {})",
        "import _thread\n_thread.start_new_thread(print, ())",
        "import os\nos.kill(os.getppid(), 9)",
        "import os\nos.kill(PID, 9)",
        "import os\nos.kill(1, 0)",
        "import os\nos.setsid()",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        "import resource\nresult = resource.prlimit(PID, resource.RLIMIT_AS)",
        "import os\nresult = os.getpgid(PID)",
    ],
    ids=short,
)
def test_no_processes_threads_exec_or_signals(box, host, code):
    r = attack(box, host, code)
    assert r.status == Outcome.RUNTIME_ERROR, (r.status, r.error)
    assert r.error.startswith(("PermissionError", "OSError", "RuntimeError: can't start new thread", "ValueError"))


def test_raw_system_calls_through_ctypes_are_refused(box, host):
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        # fork, clone, execve, kill, tgkill, ptrace, unshare, mount, bpf, io_uring_setup, x32 fork
        "result = [libc.syscall(nr, 0, 0, 0) for nr in (57, 56, 59, 62, 234, 101, 272, 165, 321, 425, 0x40000039)]"
    )
    if os.uname().machine != "x86_64":
        pytest.skip("x86_64 syscall numbers")
    assert attack(box, host, code).output == str([-1] * 11)


def test_a_foreign_syscall_abi_is_refused(box, host):
    # `mov eax, 2; int 0x80; ret`: fork through the i386 ABI. Refused (-EPERM), or a SIGSEGV where the
    # kernel has no i386 emulation; never a second process.
    if os.uname().machine != "x86_64":
        pytest.skip("x86_64 machine code")
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\n"
        "page = libc.mmap(None, 4096, 7, 0x22, -1, 0)\n"
        "ctypes.memmove(page, b'\\xb8\\x02\\x00\\x00\\x00\\xcd\\x80\\xc3', 8)\n"
        "result = ctypes.CFUNCTYPE(ctypes.c_int)(page)()"
    )
    r = attack(box, host, code)
    assert (r.status, r.output) in ((OK, "-1"), (Outcome.CRASHED, None)), (r.status, r.output, r.error)


# --- nothing outlives the run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import atexit\natexit.register(lambda: [0 for _ in iter(int, 1)])",
        "class Spin:\n    def __del__(self):\n        while True:\n            pass\nkeep = Spin()",
        "import gc\nclass Cycle:\n    def __del__(self):\n        open('late', 'w')\nc = Cycle()\nc.me = c\n",
        "import sys\nsys.stdout.write('x' * 100)\nsys.stdout.flush = lambda: [0 for _ in iter(int, 1)]",
    ],
    ids=short,
)
def test_finalizers_and_atexit_hooks_die_with_the_run(box, host, code, wait_gone):
    # Each hook would run forever: a report in time (OK, not a timeout) means none of them ran.
    r = attack(box, host, code + "\nimport os\nresult = os.getpid()", timeout_ms=3000)
    assert r.ok, (r.status, r.error)
    assert wait_gone(int(r.output)), "the run's process outlived its report"


def test_poisoned_builtins_and_modules_do_not_reach_the_next_run(box, host):
    code = (
        "import builtins, sys, os, math, ctypes\n"
        "builtins.len = lambda x: -1\nbuiltins.print = None\nmath.pi = 3\nsys.modules['json'] = None\n"
        "os.environ['PATH'] = '/evil'\n"
        "ctypes.c_long.from_address(id(7) + 24).value = 8  # the small int 7 is now 8, in this process\n"
        "result = 7"
    )
    attack(box, host, code)
    r = box.run("import math, os, json\nprint('ok')\nresult = (len([1, 2, 3]), math.pi > 3.14, os.environ['PATH'], 7)")
    assert (r.output, r.stdout) == ("(3, True, '/usr/bin:/bin', 7)", "ok\n")


# --- forged results and ways to leave -------------------------------------------------------------------


def forged_report(output: str) -> bytes:
    body = b"ok\nr\n0\n0\n0\n" + output.encode()
    return RESULT_MAGIC + LEN.pack(len(body)) + body


def test_a_result_printed_to_stdout_is_not_a_result(box, host):
    code = f"import os, sys\nsys.stdout.buffer.write({forged_report('42')!r})\nsys.stdout.flush()\nos._exit(0)"
    r = attack(box, host, code)
    assert (r.status, r.output) == (Outcome.CRASHED, None)


def test_a_forged_report_cannot_hide_a_timeout_or_a_flood(box, host):
    flood = f"import os\nos.write({RESULT_FD}, {forged_report('42')[:-1]!r})\nwhile True:\n    print('x' * 10000)"
    assert attack(box, host, flood).status == Outcome.OUTPUT_LIMIT  # the report is incomplete: no result
    r = attack(box, host, f"import os\nos.write({RESULT_FD}, b'garbage' * 100)\nos._exit(0)")
    assert r.status == Outcome.CRASHED
    r = attack(box, host, f"import os\nos.close({RESULT_FD})\nresult = 1")
    assert r.status == Outcome.CRASHED


@pytest.mark.parametrize(
    "code, status, error",
    [
        ("raise SystemExit(0)", Outcome.RUNTIME_ERROR, "SystemExit: 0 (line 4)"),
        ("raise KeyboardInterrupt", Outcome.RUNTIME_ERROR, "KeyboardInterrupt (line 4)"),
        ("class Out(BaseException):\n    pass\nraise Out('bye')", Outcome.RUNTIME_ERROR, "Out: bye (line 6)"),
        ("class Bad(Exception):\n    def __str__(self):\n        raise Bad()\nraise Bad()",
         Outcome.RUNTIME_ERROR, "Bad (line 7)"),
        ("import os\nos._exit(0)", Outcome.CRASHED, "the process exited early with status 0"),
        ("import os\nos.abort()", Outcome.CRASHED, None),
        ("import ctypes\nctypes.string_at(0)", Outcome.CRASHED, "the process was killed by signal SIGSEGV"),
    ],
    ids=short,
)
def test_ways_to_leave_have_clear_outcomes(box, host, code, status, error):
    r = attack(box, host, code)
    assert r.status == status and (error is None or r.error == error), (r.status, r.error)


def test_tests_cannot_be_passed_by_leaving_early(verifier):
    test = "def check(candidate):\n    assert candidate(1) == 2\n"
    for program, outcome in [
        ("def f(x):\n    raise SystemExit(0)", Outcome.RUNTIME_ERROR),
        ("import sys\ndef f(x):\n    sys.exit(0)", Outcome.UNSAFE),  # sys is not a module programs get
        ("def f(x):\n    return x\nraise SystemExit", Outcome.RUNTIME_ERROR),
        ("def f(x):\n    assert False", Outcome.RUNTIME_ERROR),  # the program's own assert is not a test
    ]:
        verdict = verifier.verify_tests(program, test, "f")
        assert verdict.outcome is outcome, (program, verdict)


# --- resources -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, status, timeout_ms",
    [
        ("sum(range(10**15))", Outcome.TIMEOUT, 200),  # a C loop that no signal handler can interrupt
        ("while True:\n    pass", Outcome.TIMEOUT, 200),
        ("import _signal as s\ns.signal(s.SIGALRM, s.SIG_IGN)\nwhile True:\n    pass", Outcome.TIMEOUT, 200),
        ("x = bytearray(10**10)", Outcome.MEMORY_LIMIT, 1000),
        ("x = [0]\nwhile True:\n    x = x + x", Outcome.MEMORY_LIMIT, 5000),
        ("x = 10 ** (10 ** 9)", Outcome.TIMEOUT, 200),  # a huge integer: too slow long before too big
        ("x = 1 << (1 << 40)", Outcome.MEMORY_LIMIT, 1000),  # and one too big at once
        ("x = int('9' * 100_000)", Outcome.RUNTIME_ERROR, 1000),  # the int/str conversion limit
        ("while True:\n    print('x' * 10000)", Outcome.OUTPUT_LIMIT, 2000),
        ("import os\nwhile True:\n    os.write(2, b'y' * 65536)", Outcome.OUTPUT_LIMIT, 2000),
        ("print('x' * 50_000_000)", Outcome.OUTPUT_LIMIT, 2000),
        ("f = open('big', 'wb')\nwhile True:\n    f.write(b'z' * 65536)", Outcome.OUTPUT_LIMIT, 2000),
        ("files = [open(f'f{i}', 'w') for i in range(10_000)]", Outcome.RUNTIME_ERROR, 2000),  # RLIMIT_NOFILE
        ("def f(n):\n    return f(n + 1)\nf(0)", Outcome.RUNTIME_ERROR, 2000),  # RecursionError
        ("x = ()\nfor _ in range(10**6):\n    x = (x,)\nhash(x)", Outcome.CRASHED, 5000),  # C-stack overflow
    ],
    ids=short,
)
def test_resource_exhaustion_is_bounded(box, host, code, status, timeout_ms):
    t0 = time.perf_counter()
    r = attack(box, host, code, timeout_ms=timeout_ms)
    assert r.status == status, (r.status, r.error)
    assert time.perf_counter() - t0 < timeout_ms / 1000 + 2


# --- sources that attack the parser --------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, error",
    [
        ("result = " + "(" * 300 + "1" + ")" * 300, "too many nested parentheses (line 1)"),
        ("result = " + "-" * 15_000 + "1", "the program is too large or too deeply nested to compile"),
        ("result = 1" + "+1" * 5000, "the program is too deeply nested to compile"),
        ("".join(" " * i + "for x in []:\n" for i in range(30)) + " " * 30 + "pass",
         "too many statically nested blocks (line 21)"),
        ("result = 1\0", "source code cannot contain null bytes"),
        ("result = 1\nx = '\ud800'", "the program is not valid UTF-8 (line 2)"),
        ("x = 1\n" * 400_000, "the program is too long (2400000 characters; the limit is 20000)"),
    ],
    ids=short,
)
def test_parser_and_compiler_bombs_are_syntax_errors(verifier, code, error):
    verdict = verifier.verify(code, "1")
    assert verdict.error == error and verdict.outcome in (Outcome.SYNTAX_ERROR, Outcome.UNSAFE)


@pytest.mark.parametrize(
    "code, status",
    [
        ("x = " + "(" * 500_000, Outcome.SYNTAX_ERROR),
        ("x = " + "-" * 900_000 + "1", Outcome.SYNTAX_ERROR),
        ("x = 1" + "+1" * 400_000, Outcome.SYNTAX_ERROR),
        ("x = '\ud800'", Outcome.SYNTAX_ERROR),
        ("x = 1\n" * 150_000, Outcome.SYNTAX_ERROR),  # compiling a megabyte needs more than 256 MiB
        ("x = 1\n" * 20_000, OK),
    ],
    ids=short,
)
def test_megabyte_sources_are_bounded_in_the_child(box, host, code, status):
    r = attack(box, host, code, timeout_ms=5000, policy="task")
    assert r.status == status, (r.status, r.error)
