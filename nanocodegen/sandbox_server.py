"""Sandbox server: runs untrusted Python, one disposable pre-forked child per program.

`nanocodegen.sandbox.Sandbox` starts this file as a script in a clean interpreter, so the server never
imports torch or the nanocodegen package (whose __init__ may):

    python -S -s -P -B -X utf8 nanocodegen/sandbox_server.py FD LIMITS BASE_DIR

It imports only small stdlib modules, because every page the server maps is copied into each child's page
tables at fork and every page a child touches is copied on write; both are the per-run cost. It speaks
length-prefixed marshal on the socket FD (the client is the only peer): a hello {"pid", "features"}, then
one reply per request {"code": str, "timeout_ms": int}; EOF means shut down. What the isolation does and
does not guarantee is written in nanocodegen/sandbox.py; the kernel-facing pieces are in sandbox_os.py.
"""

from __future__ import annotations

import _signal  # the C half of `signal`, which would also import enum (a megabyte per child)
import builtins
import gc
import marshal
import os
import resource
import select
import struct
import sys
import time

if __package__:  # imported by the client, nanocodegen.sandbox, for the wire format and the statuses
    from nanocodegen import sandbox_os
else:  # run as the server script. -P keeps this directory off sys.path; add it for this one import only,
    # so that programs cannot import the package's other modules by name.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_os

    del sys.path[0]

# Statuses a run can end in. Apart from OK ("ran to the end; the verifier judges the output") these are the
# string values of nanocodegen.records.Outcome (not imported: this file must not import the package).
OK = "ok"
SYNTAX_ERROR = "syntax_error"
RUNTIME_ERROR = "runtime_error"
TIMEOUT = "timeout"
MEMORY_LIMIT = "memory_limit"
OUTPUT_LIMIT = "output_limit"
CRASHED = "crashed"

FILENAME = "<code>"  # the program's compile() filename: tracebacks name no host path
MAX_ERROR_CHARS = 200  # exception messages are cut to this, so feedback stays short
SETUP_TIMEOUT_S = 10.0  # a child that is not ready by then is broken, not slow
EXIT_SETUP_FAILED = 70
MAX_CPU_S = 602  # RLIMIT_CPU before a request sets it: the client's largest time limit (600 s) + 2
# The child's fds while the program runs: 0 = /dev/null, 1 and 2 = stdout/stderr memfds, RESULT_FD = the
# write end of the result pipe. It sits high so that the program's own open() calls never land on it by
# accident; sandbox.py says why a program that goes looking for it gains nothing.
RESULT_FD = 255
GO_FD = 254  # the pipe that brings the code; closed before the program runs
READY_FD = 253  # the pipe on which the child says it is ready; closed before the program runs
RULESET_FD = 252  # the Landlock ruleset the server built for this child; closed once enforced
RESULT_MAGIC = b"NCG1\n"

_LEN = struct.Struct("!I")
_SIGKILL, _SIGXCPU, _SIGXFSZ = _signal.SIGKILL, _signal.SIGXCPU, _signal.SIGXFSZ
_SIGNAL_NAMES = {
    v: k for k, v in vars(_signal).items()
    if k.startswith("SIG") and not k.startswith("SIG_") and k not in ("SIGIOT", "SIGCLD", "SIGPOLL")
}  # fmt: skip


# --- wire: 4-byte big-endian length, then marshal (client <-> server only; never data from a child) ---------

HEADER = _LEN  # the client frames its side the same way


def encode_msg(obj: dict) -> bytes:
    data = marshal.dumps(obj)
    return _LEN.pack(len(data)) + data


def send_msg(fd: int, obj: dict) -> None:
    _write_all(fd, encode_msg(obj))


def recv_msg(fd: int) -> dict | None:
    """The next message, or None on EOF between messages."""
    head = _read_exact(fd, _LEN.size)
    return None if head is None else marshal.loads(_read_exact(fd, _LEN.unpack(head)[0]) or b"")


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("the peer closed the channel in the middle of a message")
            return None
        buf += chunk
    return buf


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- feedback texts (shown to the model: short, deterministic, no host paths) -------------------------------


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def with_line(text: str, line: int | None) -> str:
    return f"{text} (line {line})" if line else text


def syntax_error_text(e: BaseException) -> str:
    """Text for anything compile()/ast.parse() raise: SyntaxError (and Indentation/TabError), ValueError
    for NUL bytes on some 3.11 releases, RecursionError/MemoryError for too deeply nested code."""
    if isinstance(e, SyntaxError):
        if "null bytes" in str(e.msg):
            return "source code cannot contain null bytes"
        return with_line(_one_line(str(e.msg or "invalid syntax")), e.lineno)
    if isinstance(e, ValueError) and "null bytes" in str(e):
        return "source code cannot contain null bytes"
    if isinstance(e, RecursionError | MemoryError):
        return "the program is too deeply nested to compile"
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


def user_line(tb) -> int | None:
    """Line of the innermost traceback frame that is the program's own code."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def exception_text(e: BaseException, run_dir: str) -> str:
    try:
        message = str(e)
    except BaseException:  # a hostile __str__; the type name alone still says what happened
        message = ""
    message = _one_line(scrub(message, run_dir))
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    text = f"{type(e).__name__}: {message}" if message else type(e).__name__
    return with_line(text, user_line(e.__traceback__))


# --- the child: set up, wait for the program, run it, report, exit ------------------------------------------


def child_main(fds: tuple[int, ...], run_dir: str, ruleset: int, limits: dict, server: int):
    """Body of a forked child; never returns. fds = (ready pipe, go pipe, stdout, stderr, result pipe)."""
    try:
        try:
            _set_up_child(fds, run_dir, ruleset, limits, server)
            os.write(READY_FD, b"R")
        except BaseException as e:
            # Tell the server why (it raises this to the client), then die: a half-set-up child must not run.
            for fd in (READY_FD, fds[0]):  # after or before the dup2 in _set_up_child
                try:
                    os.write(fd, f"E{type(e).__name__}: {e}".encode())
                    break
                except OSError:
                    continue
            raise
        os.close(READY_FD)
        (n,) = _LEN.unpack(_read_exact(GO_FD, _LEN.size))
        code = _read_exact(GO_FD, n).decode("utf-8", "surrogatepass")
        os.close(GO_FD)
        _run_program(code, run_dir, limits)
    finally:
        os._exit(EXIT_SETUP_FAILED)


def _set_up_child(fds: tuple[int, ...], run_dir: str, ruleset: int, limits: dict, server: int):
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
    os.chdir(run_dir)
    os.environ["HOME"] = os.environ["TMPDIR"] = run_dir
    # Hard limits: once lowered, the program cannot raise them again. RLIMIT_CPU waits for the request
    # (the server lowers it to fit the time limit then), since raising a hard limit takes privilege.
    resource.setrlimit(resource.RLIMIT_CPU, (MAX_CPU_S, MAX_CPU_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"],) * 2)  # stdout, stderr and any file
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    if sandbox_os.FORK_LIMIT_BINDS:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no threads
    if ruleset >= 0:
        sandbox_os.landlock_enforce(RULESET_FD)
    # Last: anything above may allocate.
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)


def _run_program(code: str, run_dir: str, limits: dict) -> None:
    """Run the program as a module body, write one result frame to RESULT_FD, exit. Never returns."""
    # Bound before the program runs: it may rebind sys.stdout or module attributes, not these locals.
    write, exit_, clock, usage, streams = os.write, os._exit, time.perf_counter, resource.getrusage, (
        sys.stdout, sys.stderr)  # fmt: skip
    start, before = clock(), usage(resource.RUSAGE_SELF)
    status, text, flags = _execute(code, run_dir, limits)
    for stream in streams:
        try:
            stream.flush()
        except BaseException:  # past the output cap (the server sees the size) or closed by the program
            pass
    wall_ms, after = (clock() - start) * 1000, usage(resource.RUSAGE_SELF)
    cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    body = f"{status}\n{flags}\n{cpu_ms:.3f}\n{wall_ms:.3f}\n{after.ru_maxrss}\n".encode()
    body += text.encode("utf-8", "surrogatepass")
    data = RESULT_MAGIC + _LEN.pack(len(body)) + body
    while data:
        data = data[write(RESULT_FD, data) :]
    exit_(0)


def _execute(code: str, run_dir: str, limits: dict) -> tuple[str, str, str]:
    """(status, output or error text, flags); flags: "r" = a global `result` exists, "t" = output cut."""
    try:
        program = compile(code, FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return SYNTAX_ERROR, syntax_error_text(e), ""
    # Real builtins and a fresh module namespace: isolation is the OS's job, not a restricted dict's.
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    memory_line = 0
    try:
        exec(program, namespace)
        has_result = "result" in namespace
        output = str(namespace["result"]) if has_result else "None"
    except MemoryError as e:
        memory_line = user_line(e.__traceback__) or -1
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the program raised them, report them
        return RUNTIME_ERROR, exception_text(e, run_dir), ""
    if memory_line:
        namespace.clear()  # free what the program holds before building the report
        text = f"exceeded the memory limit of {format_size(limits['memory_bytes'])}"
        return MEMORY_LIMIT, with_line(text, memory_line if memory_line > 0 else None), ""
    cap = limits["result_chars"]
    return OK, output[:cap], ("r" if has_result else "") + ("t" if len(output) > cap else "")


# --- the server: a pre-forked child waits ready; each request uses it up -----------------------------------


class SetupFailed(RuntimeError):
    """A child could not be set up (the kernel refused a limit or a Landlock call)."""


class _Child:
    # A plain class, not a dataclass: `dataclasses` imports `inspect` and `re` into every child.
    __slots__ = ("pid", "pidfd", "ready", "go", "out", "err", "res", "run_dir", "reaped", "status", "usage")

    def __init__(self, pid, pidfd, ready, go, out, err, res, run_dir):
        self.pid, self.pidfd, self.ready, self.go = pid, pidfd, ready, go
        self.out, self.err, self.res, self.run_dir = out, err, res, run_dir
        self.reaped, self.status, self.usage = False, 0, None


class Server:
    """Runs requests one at a time. The next child is forked while the current program runs, and the
    current child is reaped after the reply is sent, so neither fork nor exit is on the critical path."""

    def __init__(self, base_dir: str, limits: dict, features: dict):
        self.base_dir, self.limits, self.features = base_dir, limits, features
        self.pid = os.getpid()
        self.count = 0
        self.live: set[int] = set()  # children forked and not yet finished
        self.children_path = f"/proc/self/task/{self.pid}/children"

    def serve(self, client: int) -> None:
        spare = self.spawn()
        try:
            while (request := recv_msg(client)) is not None:
                child, spare = spare, None
                try:
                    child = self.ready_child(child)
                    reply, spare = self.run(child, request)
                except BaseException as e:
                    send_msg(client, {"fatal": f"{type(e).__name__}: {e}"})
                    raise
                send_msg(client, reply)
                self.finish(child)
        finally:
            if spare is not None:
                self.finish(spare)

    def spawn(self) -> _Child:
        """Fork the next child; it sets itself up in parallel with whatever the server does next."""
        self.count += 1
        run_dir = f"{self.base_dir}/run{self.count}"
        os.mkdir(run_dir, 0o700)
        out, err = os.memfd_create("stdout"), os.memfd_create("stderr")
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        # The Landlock ruleset is built here, so the child only has to enforce it.
        ruleset = sandbox_os.landlock_ruleset(run_dir, self.features["landlock_abi"])
        pid = os.fork()
        if pid == 0:
            child_main((ready_w, go_r, out, err, res_w), run_dir, ruleset, self.limits, self.pid)
        for fd in (ready_w, go_r, res_w) + ((ruleset,) if ruleset >= 0 else ()):
            os.close(fd)
        self.live.add(pid)
        try:
            os.setpgid(pid, pid)  # the child does this too; doing it here as well closes the race
        except OSError:
            pass  # the child got there first, or already died (run() will see that)
        return _Child(pid, os.pidfd_open(pid), ready_r, go_w, out, err, res_r, run_dir)

    def ready_child(self, child: _Child) -> _Child:
        """`child` once it is set up; a fresh one if it was killed (from outside) while it waited."""
        for _attempt in range(2):
            if not select.select([child.ready], [], [], SETUP_TIMEOUT_S)[0]:
                raise SetupFailed(f"a child was not ready after {SETUP_TIMEOUT_S:.0f} s")
            ready = os.read(child.ready, 4096)
            if ready == b"R" and not select.select([child.pidfd], [], [], 0)[0]:  # ready and still alive
                return child
            if ready.startswith(b"E"):  # + why: the kernel refused part of the set-up, and will again
                raise SetupFailed(ready[1:].decode(errors="replace"))
            self.finish(child)
            child = self.spawn()
        raise SetupFailed("two children in a row died during set-up")

    def run(self, child: _Child, request: dict) -> tuple[dict, _Child]:
        """Run one program in a ready child; returns the reply and the next child (forked meanwhile)."""
        timeout_ms = request["timeout_ms"]
        # A backstop only: the wall-clock kill below comes first. Whole seconds, at least one to spare.
        cpu_s = int(timeout_ms / 1000) + 2
        resource.prlimit(child.pid, resource.RLIMIT_CPU, (cpu_s, cpu_s))
        code = request["code"].encode("utf-8", "surrogatepass")
        start = time.perf_counter()  # the program's budget starts now: fork and set-up are behind us
        try:
            _write_all(child.go, _LEN.pack(len(code)) + code)
        except BrokenPipeError:
            pass  # the child died just now (killed from outside); _wait sees it exit
        spare = self.spawn()
        frame, timed_out = self._wait(child, start + timeout_ms / 1000)
        wall_ms = (time.perf_counter() - start) * 1000
        _kill(child.pid)  # done or out of time; a program that forged its report early stops here too
        _kill_group(child.pid)
        if frame is None:  # no report: the exit status says why, so reap now
            self._reap(child)
        return self._classify(child, frame, timed_out, wall_ms, timeout_ms), spare

    def _wait(self, child: _Child, deadline: float) -> tuple[bytes | None, bool]:
        """(the child's report once complete, or None if it exited without one; whether time ran out)."""
        buf, fds, limit = b"", [child.res, child.pidfd], self.limits["result_chars"] * 4 + 4096
        while True:
            # Past the deadline this still polls once, so a report that was in time counts even if the
            # server (busy forking the spare) looks late.
            remaining = max(0.0, deadline - time.perf_counter())
            readable = select.select(fds, [], [], remaining)[0]
            if not readable:
                return None, True
            if child.res in readable:
                chunk = os.read(child.res, 65536)
                if not chunk:  # EOF: the child exited, or the program closed the channel
                    fds.remove(child.res)
                buf += chunk
                if len(buf) > limit or _frame_complete(buf):
                    return buf, False  # (one too long is not ours; _parse_frame rejects it)
            elif child.pidfd in readable:
                return None, False

    def _classify(self, child: _Child, frame: bytes | None, timed_out: bool, wall_ms: float, timeout_ms: int):
        tail, cap = self.limits["tail_bytes"], self.limits["output_bytes"]
        out_size, err_size = os.fstat(child.out).st_size, os.fstat(child.err).st_size
        reply = {"stdout": _tail(child.out, out_size, tail), "stderr": _tail(child.err, err_size, tail)}
        if child.reaped:  # the server's own measurements; a report, if any, replaces them below
            reply.update(
                cpu_ms=round((child.usage.ru_utime + child.usage.ru_stime) * 1000, 3),
                wall_ms=round(wall_ms, 3),
                peak_rss_bytes=child.usage.ru_maxrss * 1024,  # Linux reports KiB
            )
        status = child.status if child.reaped else 0
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        # What the server saw itself (the clock, the sizes, the signal) outranks what the child reported.
        if timed_out or signum == _SIGXCPU:
            reply.update(status=TIMEOUT, error=f"exceeded the time limit of {timeout_ms} ms")
        elif max(out_size, err_size) >= cap:
            reply.update(status=OUTPUT_LIMIT, error=f"printed more than {format_size(cap)} of output")
        elif signum == _SIGXFSZ:
            reply.update(status=OUTPUT_LIMIT, error=f"wrote a file larger than {format_size(cap)}")
        elif signum:
            name = _SIGNAL_NAMES.get(signum, str(signum))
            reply.update(status=CRASHED, error=f"the process was killed by signal {name}")
        elif frame is None:
            code = os.WEXITSTATUS(status)
            reply.update(status=CRASHED, error=f"the process exited early with status {code}")
        elif (report := _parse_frame(frame)) is None:
            reply.update(status=CRASHED, error="the process ended without a valid result")
        else:
            reply.update(report)
        return reply

    def finish(self, child: _Child) -> None:
        """Reap a used (or unused) child, kill what it left behind, free its files."""
        if not child.reaped:
            _kill(child.pid)
            _kill_group(child.pid)
            self._reap(child)
        self.live.discard(child.pid)
        self.sweep()
        for fd in (child.pidfd, child.ready, child.go, child.out, child.err, child.res):
            os.close(fd)
        sandbox_os.remove_tree(child.run_dir)

    def _reap(self, child: _Child) -> None:
        _, child.status, child.usage = os.wait4(child.pid, 0)
        child.reaped = True

    def sweep(self) -> None:
        """Kill what a program left behind. Its process group is already killed; a descendant that left
        the group is re-parented to this server (a child subreaper), so it shows up as our child here."""
        for _ in range(100):  # each round kills one generation; a fork loop cannot outrun 100 of them
            # Never a child the server still needs (the spare).
            pids = [p for p in self._children() if p not in self.live]
            if not pids:
                break
            for pid in pids:
                _kill(pid)
            for pid in pids:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def _children(self) -> list[int]:
        try:  # os.open, not open(): this runs once per request, and file objects are costly here
            fd = os.open(self.children_path, os.O_RDONLY)
        except OSError:
            return []  # kernel without CONFIG_PROC_CHILDREN: the process-group kill has to do
        try:
            return [int(p) for p in os.read(fd, 65536).split()]
        finally:
            os.close(fd)


_FRAME_HEAD = len(RESULT_MAGIC) + _LEN.size


def _frame_complete(buf: bytes) -> bool:
    return len(buf) >= _FRAME_HEAD and len(buf) >= _FRAME_HEAD + _LEN.unpack_from(buf, len(RESULT_MAGIC))[0]


def _parse_frame(frame: bytes) -> dict | None:
    """The child's report if it is one well-formed frame; anything else counts as no result."""
    if not frame.startswith(RESULT_MAGIC) or not _frame_complete(frame):
        return None
    if len(frame) != _FRAME_HEAD + _LEN.unpack_from(frame, len(RESULT_MAGIC))[0]:
        return None  # more than one frame: not what the child's epilogue writes
    try:
        status, flags, cpu_ms, wall_ms, rss_kib, text = frame[_FRAME_HEAD:].split(b"\n", 5)
        report = {
            "status": status.decode(),
            "cpu_ms": float(cpu_ms),
            "wall_ms": float(wall_ms),
            "peak_rss_bytes": int(rss_kib) * 1024,
        }
        text = text.decode("utf-8", "surrogatepass")
    except ValueError:  # too few fields, not numbers, not UTF-8
        return None
    if report["status"] == OK:
        return {**report, "output": text, "has_result": b"r" in flags, "truncated": b"t" in flags}
    if report["status"] in (SYNTAX_ERROR, RUNTIME_ERROR, MEMORY_LIMIT):
        return {**report, "error": text[: MAX_ERROR_CHARS * 2]}
    return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, _SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, _SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # no such group left (the program moved itself out); sweep() finds strays


def _tail(fd: int, size: int, n: int) -> str:
    return os.pread(fd, n, max(0, size - n)).decode("utf-8", "replace") if size else ""


def main(argv: list[str]) -> None:
    client = int(argv[1])
    limits, base_dir = marshal.loads(bytes.fromhex(argv[2])), argv[3]
    try:
        features = sandbox_os.prepare_server()
        server = Server(base_dir, limits, features)
        send_msg(client, {"pid": os.getpid(), "features": features})
        # Every fork copies the page-table entries of the server's private memory, and every later write to
        # a shared page is a copy-on-write fault, in server and child alike: shed the import-time garbage,
        # hand free heap back to the kernel, and keep the collector from touching the objects that remain.
        gc.collect()
        sandbox_os.trim_heap()
        gc.freeze()
        server.serve(client)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client died; its children die with this process (PR_SET_PDEATHSIG)
    finally:  # the client removes it too, unless it died first
        sandbox_os.remove_tree(base_dir)


if __name__ == "__main__":
    main(sys.argv)
