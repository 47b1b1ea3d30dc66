"""What runs inside a sandbox child: set-up, the job (run, tests), its report; the outcomes.

The sandbox server (sandbox_server.py) forks a child per program; the child runs `child_main` and never
returns. Standard library only, like the server. The feedback texts built here and in the server are
shown to the model, so they are short and deterministic, with no host paths, pids or addresses.

The program arrives compiled: the checker (sandbox_checker.py, a long-lived child set up the same way)
parsed, linted and compiled it. A job (marshal, on the go pipe) is {"program": the marshalled code
object of the program, "test": the marshalled code object of the test code, compiled by the client, or
None, "entry_point": str}. With a test, the program is run, then the test code in the same namespace,
then `check(<entry_point>)`, as HumanEval's harness does.
"""

from __future__ import annotations

import builtins
import marshal
import os
import resource
import select
import struct
import sys
import time

if __package__:  # nanocodegen.sandbox_child, imported by the client side for the texts and statuses
    from nanocodegen import sandbox_os
    from nanocodegen.sandbox_lint import with_line
else:  # imported by the server script, which has put this directory on sys.path for the moment
    import sandbox_os
    from sandbox_lint import with_line

# Statuses a run can end in. Apart from OK ("ran to the end; the verifier judges the output") these are the
# string values of nanocodegen.records.Outcome (not imported: the server must not import the package).
OK = "ok"
SYNTAX_ERROR = "syntax_error"
RUNTIME_ERROR = "runtime_error"
TIMEOUT = "timeout"
MEMORY_LIMIT = "memory_limit"
OUTPUT_LIMIT = "output_limit"
CRASHED = "crashed"
UNSAFE = "unsafe"  # the lint refused the program; it did not run
WRONG_OUTPUT = "wrong_output"  # a test's assertion failed (runs with tests only)

# What a program may import. The child can read no file outside its private directory, so these are
# imported by the server before it forks (sandbox_server.preload), and the child's import system finds
# nothing else. Chosen for HumanEval (typing, math, re, hashlib, random, copy, collections, string) and
# everyday algorithmic code.
AVAILABLE_MODULES = frozenset(
    {"bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions", "functools", "hashlib",
     "heapq", "itertools", "json", "math", "operator", "random", "re", "statistics", "string", "typing"}
)  # fmt: skip
# Preloaded with the above: imported on first use by datetime.strptime, or a common spelling.
HELPER_MODULES = ("_strptime", "collections.abc")

FILENAME = "<code>"  # the program's compile() filename: tracebacks name no host path
TEST_FILENAME = "<test>"  # the test code's
MAX_ERROR_CHARS = 200  # exception messages are cut to this, so feedback stays short
EXIT_SETUP_FAILED = 70
MAX_TIMEOUT_MS = 600_000  # the largest time limit a request may ask for
MAX_CPU_S = MAX_TIMEOUT_MS // 1000 + 2  # RLIMIT_CPU until the server lowers it to fit the request's limit
# The child's fds while the program runs: 0 = /dev/null, 1 and 2 = stdout/stderr memfds, RESULT_FD = the
# write end of the result pipe. It sits high so that the program's own open() calls never land on it by
# accident; sandbox.py says why a program that goes looking for it gains nothing.
RESULT_FD = 255
GO_FD = 254  # the pipe that brings the code; closed before the program runs
READY_FD = 253  # the pipe on which the child says it is ready; closed before the program runs
RULESET_FD = 252  # the Landlock ruleset the server built for this child; closed once enforced
# The report: RESULT_MAGIC, a 4-byte big-endian length, then "status\nflags\ncpu_ms\nwall_ms\nrss_kib\n"
# and the output (OK) or the error text, UTF-8.
RESULT_MAGIC = b"NCG1\n"
LEN = struct.Struct("!I")


# --- feedback texts (shown to the model: short, deterministic, no host paths) -------------------------------


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def syntax_error_text(e: BaseException) -> str:
    """Text for anything compile()/ast.parse() raise: SyntaxError (and Indentation/TabError), ValueError
    for NUL bytes on some 3.11 releases, UnicodeError for lone surrogates, RecursionError/MemoryError for
    too deeply nested or too large code, anything else as "Type: message"."""
    if isinstance(e, UnicodeError):
        return "the program is not valid UTF-8"
    if isinstance(e, SyntaxError):
        if "null bytes" in str(e.msg):
            return "source code cannot contain null bytes"
        return with_line(_one_line(str(e.msg or "invalid syntax")), e.lineno)
    if isinstance(e, ValueError) and "null bytes" in str(e):
        return "source code cannot contain null bytes"
    if isinstance(e, RecursionError):
        return "the program is too deeply nested to compile"
    if isinstance(e, MemoryError):
        return "the program is too large or too deeply nested to compile"
    return _one_line(f"{type(e).__name__}: {e}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def scrub(text: str, run_dir: str) -> str:
    """Remove what differs between runs or hosts: the private dir, interpreter paths, object addresses."""
    for path, name in ((run_dir, "."), (sys.prefix, "<python>"), (sys.base_prefix, "<python>")):
        text = text.replace(path, name)
    # "0x7f3a2c...": an address in a default repr. (No `re`: it is another megabyte in every child.)
    parts = text.split("0x")
    for i in range(1, len(parts)):
        digits = len(parts[i]) - len(parts[i].lstrip("0123456789abcdefABCDEF"))
        if digits >= 4:
            parts[i] = "..." + parts[i][digits:]
    return "0x".join(parts)


def user_line(tb, filename: str = FILENAME) -> int | None:
    """Line of the innermost traceback frame that is the program's own code (or `filename`'s)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def innermost_source(tb) -> str:
    """FILENAME or TEST_FILENAME, whichever the innermost frame of either belongs to; "" if neither."""
    found = ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name in (FILENAME, TEST_FILENAME):
            found = name
        tb = tb.tb_next
    return found


def exception_text(e: BaseException, run_dir: str) -> str:
    try:
        message = str(e)
    except BaseException:  # a hostile __str__; the type name alone still says what happened
        message = ""
    message = _one_line(scrub(message, run_dir))
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    text = f"{type(e).__name__}: {message}" if message else type(e).__name__
    if innermost_source(e.__traceback__) == TEST_FILENAME:  # raised by the tests, not the program
        line = user_line(e.__traceback__, TEST_FILENAME)
        return f"{text} (test line {line})"
    return with_line(text, user_line(e.__traceback__))


# --- the child: set up, wait for the program, run it, report, exit ------------------------------------------


def child_main(fds: tuple[int, ...], run_dir: str, ruleset: int, limits: dict, server: int, warm: bool, serve=None):
    """Body of a forked child; never returns. fds = (ready pipe, go pipe, stdout, stderr, result pipe);
    `warm`: run warm_up() during the set-up; `serve`: instead of one job, run this once set up (the
    checker's loop, sandbox_checker.serve_checks)."""
    try:
        try:
            set_up_child(fds, run_dir, ruleset, limits, server)
            os.write(READY_FD, b"R")
        except BaseException as e:
            # Tell the server why (it raises this to the client), then die: a half-set-up child must not run.
            for fd in (READY_FD, fds[0]):  # after or before the dup2 in set_up_child
                try:
                    os.write(fd, f"E{type(e).__name__}: {e}".encode())
                    break
                except OSError:
                    continue
            raise
        os.close(READY_FD)
        if serve is not None:
            serve()
            os._exit(0)
        if warm:
            warm_up(stop_fd=GO_FD)  # confined already, like the program it prepares for
        (n,) = LEN.unpack(sandbox_os.read_exact(GO_FD, LEN.size))
        job = marshal.loads(sandbox_os.read_exact(GO_FD, n))
        os.close(GO_FD)
        _run_job(job, run_dir, limits)
    finally:
        os._exit(EXIT_SETUP_FAILED)


_imports_sealed = False


def seal_imports() -> None:
    """From now on, imports find only what is already loaded (the server preloaded AVAILABLE_MODULES),
    builtin or frozen: without the path finder no import looks at a file, so a missing module is a plain
    ModuleNotFoundError whether or not this kernel confines reads. For a child, or the zygote (which never
    imports again) on behalf of all its children."""
    global _imports_sealed
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") != "PathFinder"]
    _imports_sealed = True


def set_up_child(fds: tuple[int, ...], run_dir: str, ruleset: int, limits: dict, server: int):
    # What is the same for every child (no core dumps, SIGXFSZ, UTF-8 stdio, no_new_privs) the server did
    # once; what is left here is per run. It runs before the program's clock starts, overlapping the
    # previous program; page faults (copy-on-write) are most of its cost, so it touches little.
    sandbox_os.die_with_parent()
    if os.getppid() != server:  # the server died before the line above took effect
        os._exit(EXIT_SETUP_FAILED)
    os.setpgid(0, 0)  # own process group: the server kills the whole group when the run ends
    ready, go, out, err, res = fds
    moves = [(out, 1), (err, 2), (res, RESULT_FD), (go, GO_FD), (ready, READY_FD)]
    if ruleset >= 0:
        moves.append((ruleset, RULESET_FD))
    for src, dst in moves:
        os.dup2(src, dst)
    # Close everything else the server holds: its client socket, other children's pipes. fd 0 is the
    # server's stdin, /dev/null.
    os.closerange(3, RULESET_FD)
    os.closerange(RESULT_FD + 1, sandbox_os.MAX_FD)
    os.chdir(run_dir)  # also HOME and TMPDIR, which the server's environment sets to "."
    if not _imports_sealed:  # (the zygote seals them once for all its children)
        seal_imports()
    # Hard limits: once lowered, the program cannot raise them again. RLIMIT_CPU waits for the request
    # (the server lowers it to fit the time limit then), since raising a hard limit takes privilege.
    resource.setrlimit(resource.RLIMIT_CPU, (MAX_CPU_S, MAX_CPU_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"],) * 2)  # stdout, stderr and any file
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    if sandbox_os.FORK_LIMIT_BINDS:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no threads
    if ruleset >= 0:
        sandbox_os.landlock_enforce(RULESET_FD)
    # After everything above that may allocate, before the filter (which refuses setrlimit).
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    sandbox_os.forbid_syscalls()


# A small program that takes the job's whole path: check (in the server: see warm_up), load, exec, str(result).
_WARM_UP_CODE = "def f(x):\n    return [i * 2 for i in range(x) if i % 3]\nresult = str(sorted(f(10))[::-1])\n"
# Once the server has preloaded the modules (a job under the `tests` policy came), a job is usually
# HumanEval-shaped: an import from typing, a documented function, then test code that calls check().
_WARM_UP_TESTED_CODE = '''from typing import List, Optional


def f(numbers: List[int], k: Optional[int] = None) -> List[int]:
    """ Keep the even numbers and those past index k, scaled by k.
    >>> f([1, 2, 3], 2)
    [4]
    """
    out = []
    for i, n in enumerate(numbers):
        if n % 2 == 0 or i > (k or 0):
            out.append(n * (k or 1))
    return sorted(set(out), key=lambda x: -x)[:10]
'''
_WARM_UP_TEST = "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2, 3], 2) == [4]\n"
_WARM_UP_LIMITS = {"result_chars": 100, "memory_bytes": 0}
_warm_up_jobs: list[bytes] = []  # the three as a job carries them (marshalled code objects); made on first use


def _warm_up_job_codes() -> list[bytes]:
    # Compiled by the server's first warm_up, so that children inherit them; not on import (the client
    # imports this module for its texts and statuses).
    if not _warm_up_jobs:
        sources = ((_WARM_UP_CODE, FILENAME), (_WARM_UP_TESTED_CODE, FILENAME), (_WARM_UP_TEST, TEST_FILENAME))
        _warm_up_jobs.extend(marshal.dumps(compile(c, name, "exec", dont_inherit=True)) for c, name in sources)
    return _warm_up_jobs


def warm_up(stop_fd: int = -1, check=None) -> None:
    """Run _WARM_UP_CODE (and, once the server has preloaded the modules, _WARM_UP_TESTED_CODE with its
    test) through the job's path, step by step; with `check` (sandbox_checker.check_source), through
    the checker's path first.

    The server calls it, with `check`, a few times before it forks, so that lazy set-up (the AST types,
    the interpreter's specialisation of this module's code and the checker's) is done once, in the
    server. A child forked while the caller leaves gaps between requests calls it once it is ready, so
    that the page faults a first load and run take (a fresh fork touching memory it shares with the
    server) fall before its job arrives, not while it runs. It stops between steps once `stop_fd` is
    readable (the job has come), so it delays a job by one step at most."""
    state: dict = {}
    code, tested_code, test = _warm_up_job_codes()
    steps = [lambda: check(_WARM_UP_CODE, "task")] if check is not None else []
    flushes = [(type(stream).flush, stream) for stream in (sys.stdout, sys.stderr)]
    steps += [
        lambda: state.update(program=marshal.loads(code), start=time.perf_counter(),
                             before=resource.getrusage(resource.RUSAGE_SELF)),
        lambda: state.update(outcome=_execute(state["program"], None, "", "", _WARM_UP_LIMITS)),
        lambda: _report(*state["outcome"], flushes, time.perf_counter, resource.getrusage, resource.RUSAGE_SELF,
                        state["start"], state["before"]),
    ]
    if "typing" in sys.modules:  # preloaded (sandbox_server.preload)
        if check is not None:
            steps.append(lambda: check(_WARM_UP_TESTED_CODE, "tests"))
        steps += [
            lambda: state.update(program=marshal.loads(tested_code), test=marshal.loads(test)),
            lambda: _execute(state["program"], state["test"], "f", "", _WARM_UP_LIMITS),
        ]
    for step in steps:
        if stop_fd >= 0 and select.select([stop_fd], [], [], 0)[0]:
            return
        step()


def _run_job(job: dict, run_dir: str, limits: dict) -> None:
    """Run the job, write one result frame to RESULT_FD, exit. Never returns."""
    # Bound before the program runs: it may rebind sys.stdout, module attributes or a stream's `flush`, not
    # these locals or the methods of the stream's (built-in, immutable) type.
    write, exit_, clock, usage, self_ = os.write, os._exit, time.perf_counter, resource.getrusage, resource.RUSAGE_SELF
    flushes = [(type(stream).flush, stream) for stream in (sys.stdout, sys.stderr)]
    # The checker made these; the test code is the client's (it compiles trusted test code once per text).
    program = marshal.loads(job["program"])
    test = None if job["test"] is None else marshal.loads(job["test"])
    start, before = clock(), usage(self_)
    status, text, flags = _execute(program, test, job["entry_point"], run_dir, limits)
    data = _report(status, text, flags, flushes, clock, usage, self_, start, before)
    while data:
        data = data[write(RESULT_FD, data) :]
    exit_(0)


def _report(status: str, text: str, flags: str, flushes, clock, usage, self_, start: float, before) -> bytes:
    """The result frame, once the program's output is flushed; times from `start` and `before` (usage)."""
    for flush, stream in flushes:
        try:
            flush(stream)
        except BaseException:  # past the output cap (the server sees the size) or closed by the program
            pass
    wall_ms, after = (clock() - start) * 1000, usage(self_)
    cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    body = f"{status}\n{flags}\n{cpu_ms:.3f}\n{wall_ms:.3f}\n{after.ru_maxrss}\n".encode()
    body += text.encode("utf-8", "surrogatepass")
    return RESULT_MAGIC + LEN.pack(len(body)) + body


def warm_type_cache() -> None:
    """In the server, before it forks: look up once every name the child's own path (set-up, reading the
    job, the report) looks up on a module, which the server's code does not. `module.name` first looks
    `name` up on the module type, through the interpreter's type-attribute cache; a miss writes a cache
    entry and two names' reference counts, so in a fresh fork it copies up to three pages, and every
    child missed the same ~20 names (measured: ~20 copy-on-write faults a child). The cache compares
    names by identity: co_names holds the interned ones the lookups use."""
    codes = [function.__code__ for function in _child_path()]
    while codes:
        code = codes.pop()
        codes += [const for const in code.co_consts if isinstance(const, type(code))]  # nested functions
        for name in code.co_names:
            getattr(sys, name, None)  # any module: what is cached is the module type's (empty) answer


def _child_path() -> tuple:
    """The functions a run's child calls between its fork and its exit, but the server never does."""
    return (child_main, set_up_child, _run_job, _report, sandbox_os.die_with_parent, sandbox_os.landlock_enforce,
            sandbox_os.forbid_syscalls, sandbox_os.sandbox_seccomp.install, sandbox_os.read_exact)  # fmt: skip


def _execute(program, test, entry_point: str, run_dir: str, limits: dict) -> tuple[str, str, str]:
    """(status, output or error text, flags); flags: "r" = a global `result` exists, "t" = output cut."""
    # Real builtins and a fresh module namespace: isolation is the OS's job, not a restricted dict's.
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    memory_line = 0
    try:
        exec(program, namespace)
        if test is None:
            has_result = "result" in namespace
            output = str(namespace["result"]) if has_result else "None"
        else:
            exec(test, namespace)
            if entry_point not in namespace:
                return RUNTIME_ERROR, f"the program defines no {entry_point}", ""
            namespace["check"](namespace[entry_point])
            has_result, output = False, ""
    except MemoryError as e:
        memory_line = user_line(e.__traceback__) or -1
    except AssertionError as e:
        if test is None or innermost_source(e.__traceback__) != TEST_FILENAME:
            return RUNTIME_ERROR, exception_text(e, run_dir), ""
        return WRONG_OUTPUT, f"failed the test on line {user_line(e.__traceback__, TEST_FILENAME)}", ""
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the program raised them, report them
        return RUNTIME_ERROR, exception_text(e, run_dir), ""
    if memory_line:
        namespace.clear()  # free what the program holds before building the report
        text = f"exceeded the memory limit of {format_size(limits['memory_bytes'])}"
        return MEMORY_LIMIT, with_line(text, memory_line if memory_line > 0 else None), ""
    cap = limits["result_chars"]
    return OK, output[:cap], ("r" if has_result else "") + ("t" if len(output) > cap else "")
