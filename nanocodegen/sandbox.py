"""Run untrusted Python in a fresh, disposable process, fast, from a warm pool of sandbox servers.

    with Sandbox(workers=2) as box:
        r = box.run("result = sum(range(10))", timeout_ms=100)
        r.status, r.output  # ("ok", "45")

How it works. Each worker is a small server process (sandbox_server.py; the child's side is in
sandbox_child.py, the kernel calls in sandbox_os.py) started as a clean interpreter (`python -S -s -P`, a
fixed environment, PYTHONHASHSEED=0) that imports only small stdlib modules and never torch, so forking it
is cheap and safe however many threads the caller has. A child is forked and set up before its request
arrives (the next one is forked while the current program runs; the finished one is reaped after the
reply), so neither fork, set-up nor exit counts against the time limit or sits on a check's critical
path. The child runs the code as a module body with the real builtins and a fresh globals dict;
`str(result)` (or "None" when no global `result` exists) is the output. Programs see the standard
library only: no site-packages, and no `exit`/`quit`/`help` (those come from `site`).

What a run reports: `RunResult.status` is OK (ran to the end; judging the output is the verifier's job) or
one of the failure outcomes, spelled as `nanocodegen.records.Outcome` values:
  syntax_error   compile() failed (the verifier usually catches this before the run)
  runtime_error  an exception escaped, SystemExit and KeyboardInterrupt included: "ExcType: msg (line N)"
  timeout        still running at the wall-clock limit, killed with SIGKILL (cannot be caught or ignored)
  memory_limit   MemoryError, under an address-space limit (RLIMIT_AS)
  output_limit   stdout or stderr reached the output cap, or a file reached the same size limit
  crashed        the process died without a well-formed result: a signal (segfault, abort), os._exit(),
                 or anything else that ends it before the child's own epilogue writes the result
Error texts are short and deterministic: no host paths, addresses, pids or timings.

Limits on every child: wall-clock kill; RLIMIT_CPU as a backstop; RLIMIT_AS; RLIMIT_FSIZE (caps stdout,
stderr and files alike); RLIMIT_NOFILE; no core dumps; stdin is /dev/null; a private, empty working
directory (HOME and TMPDIR are ".") deleted after the run; its own process group, killed when the run
ends; PR_SET_PDEATHSIG so it dies with its server. Where the kernel has them (see `Sandbox.features`):
  - Landlock (ABI >= 1): no writes, deletes or exec anywhere but the private directory;
    ABI >= 4: no TCP bind/connect; ABI >= 6: no signals to, or abstract sockets of, outside processes.
  - A seccomp filter (x86_64, aarch64): no fork, clone (so no threads either) or exec, and no syscalls
    through another ABI (i386, x32). Also RLIMIT_NPROC = 0 when not root (root ignores that limit).
  - The server is a child subreaper: a descendant that leaves the process group is re-parented to it
    and killed after the run.

The result channel. After the program, the child's epilogue writes one length-prefixed report to a pipe
whose write end sits at a high fd number (the server holds the read end); never to stdout, so nothing a
program prints can pass for a result. The server accepts a report only if it arrives complete within the
time limit and while stdout/stderr are below the output cap; then it kills the child (and its process
group) and replies without waiting for the exit. No complete report before the process ends is `crashed`,
never success. The program runs in the same process as the epilogue, so a program that goes looking for
the fd (via /proc/self/fd) can write a report of its own. That gains it nothing: a report can only claim
an output, which the program could produce by setting `result`; it cannot hide a timeout, a signal or an
output flood (the server observes those itself), and it cannot reach other runs or the host. (The
report also carries the child's own CPU time, wall time and peak RSS; a forger can only lie about itself.)

What this phase does NOT guarantee (the next hardening phase adds seccomp, namespaces, a read policy):
  - Reads are not restricted: a program can read any file the user running the benchmark can read
    (the task files included) and list processes in /proc.
  - No network namespace: UDP and Unix-socket traffic is possible; TCP only where Landlock ABI >= 4.
  - Seccomp refuses only process creation and exec: every other syscall is reachable, so kernel bugs
    are in scope for an attacker.
  - Without Landlock (old kernels) a program can write wherever the user can, and signal the user's
    other processes (the benchmark itself included); as root, much more.
  - On other architectures, as root, fork() is not blocked: a fork bomb can use up the machine's pids
    until the time limit, and a fork loop that outruns the server's sweep could leave processes.
  - CPU and memory are per process, not per run: no cgroup caps the sum over the run's descendants.
  - cpu_ms and wall_ms cover compile + run + str(result) as the child measures them (for timeouts and
    crashes: the server's clock and wait4, set-up included); peak_rss_bytes includes the ~9 MB the
    child inherits from the server.
  - The verifier parses untrusted code in the caller's process (ast.parse, size-capped); a parser bug
    would be reachable there.
"""

from __future__ import annotations

import marshal
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import weakref
from dataclasses import asdict, dataclass

from nanocodegen.sandbox_child import CRASHED, MAX_TIMEOUT_MS, OK
from nanocodegen.sandbox_os import HEADER, encode_msg

__all__ = ["OK", "Limits", "RunResult", "Sandbox", "SandboxError"]

# Run as a script, never imported here: see its docstring.
_SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_server.py")
START_TIMEOUT_S = 30.0  # a server that has not said hello by then is not coming up
REPLY_GRACE_S = 10.0  # on top of the program's time limit, before a silent server counts as hung


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits, fixed for the life of a Sandbox. The time limit is per call."""

    memory_bytes: int = 256 << 20  # RLIMIT_AS: the whole address space, ~20 MB of it the interpreter's
    output_bytes: int = 1 << 20  # RLIMIT_FSIZE: stdout, stderr, and each file the program writes
    open_files: int = 64  # RLIMIT_NOFILE
    result_chars: int = 10_000  # str(result) is cut to this many characters
    code_chars: int = 1 << 20  # longer programs are refused (ValueError) before they reach a server
    tail_bytes: int = 4096  # how much of the end of stdout/stderr comes back


@dataclass
class RunResult:
    """One run. `output` is str(result) (cut to Limits.result_chars) when status is OK, else None."""

    status: str
    output: str | None = None
    error: str = ""
    stdout: str = ""
    stderr: str = ""
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    peak_rss_bytes: int = 0
    has_result: bool = False  # the program set a global named `result`
    truncated: bool = False  # output was cut to Limits.result_chars

    @property
    def ok(self) -> bool:
        return self.status == OK


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): a server that cannot start or set up a child."""


class _ServerDied(Exception):
    pass


class _Server:
    """One sandbox server process and the socket to it. Not thread-safe: the pool hands it to one caller."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.base_dir = ""
        self.hello: dict | None = None
        self.owner = 0  # pid of the process that started the server

    def start(self) -> None:
        if not sys.executable:
            raise SandboxError("sys.executable is empty, so the sandbox server cannot be started; run Python "
                               "from an interpreter binary rather than an embedded one")
        self.base_dir = tempfile.mkdtemp(prefix="ncg-sandbox-")
        ours, theirs = socket.socketpair()
        cmd = [
            sys.executable, "-S", "-s", "-P", "-B", "-X", "utf8", _SERVER_SCRIPT,
            str(theirs.fileno()), marshal.dumps(asdict(self.limits)).hex(), self.base_dir,
        ]  # fmt: skip
        # A fixed environment (PYTHON* variables from the caller would change the interpreter) and a new
        # session (Ctrl-C in the terminal reaches the caller, which then closes the pool). HOME and TMPDIR
        # are "." so that they name each child's private working directory without a per-child update.
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "HOME": ".", "TMPDIR": "."}
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        finally:
            theirs.close()
        self.sock, self.hello, self.owner = ours, None, os.getpid()

    def ensure_ready(self) -> dict:
        # A fork of the caller (a multiprocessing worker, say) must not share its parent's server.
        if self.proc is None or self.owner != os.getpid() or self.proc.poll() is not None:
            self.stop()
            self.start()
        if self.hello is None:
            self.sock.settimeout(START_TIMEOUT_S)
            try:
                self.hello = _recv(self.sock)
            except (OSError, ValueError, EOFError) as e:
                self.hello = None
                raise SandboxError(f"the sandbox server did not start ({e}); see its error above") from None
            if self.hello is None:
                raise SandboxError("the sandbox server exited at start-up; its error is printed above")
        return self.hello

    def call(self, request: dict, timeout_s: float) -> dict:
        self.ensure_ready()
        self.sock.settimeout(timeout_s)
        try:
            self.sock.sendall(encode_msg(request))
            reply = _recv(self.sock)
        except (OSError, ValueError, EOFError) as e:  # reset, broken pipe, timeout, a cut-off message
            raise _ServerDied(str(e)) from None
        if reply is None:
            raise _ServerDied("EOF")
        if "fatal" in reply:
            self.stop()
            raise SandboxError(f"the sandbox server failed: {reply['fatal']}")
        return reply

    def stop(self) -> None:
        if self.owner == os.getpid():
            _stop(self.proc, self.sock, self.base_dir)
        elif self.sock is not None:
            self.sock.close()  # our copy only: in a fork of the caller, the server is the parent's to stop
        self.proc, self.sock, self.hello, self.base_dir = None, None, None, ""


def _recv(sock: socket.socket) -> dict | None:
    """The server's next message (sandbox_server's framing), None on EOF; honours the socket's timeout."""
    head = _recv_exact(sock, HEADER.size)
    return None if head is None else marshal.loads(_recv_exact(sock, HEADER.unpack(head)[0]) or b"")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("the sandbox server closed the socket in the middle of a message")
            return None
        buf += chunk
    return buf


def _stop(proc: subprocess.Popen | None, sock: socket.socket | None, base_dir: str) -> None:
    if sock is not None:
        sock.close()  # the server reads EOF, kills its spare child and exits
    if proc is not None:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if base_dir:
        shutil.rmtree(base_dir, ignore_errors=True)  # a run's leftovers, should a server have been killed


def _stop_all(servers: list[_Server]) -> None:
    for server in servers:
        server.stop()


class Sandbox:
    """A pool of `workers` sandbox servers; `run` is thread-safe and runs up to `workers` programs at once.

    Servers start in the background when the pool is made; the first run waits for its server's hello.
    A server that dies is restarted on the next run. Use as a context manager or call close(); pools
    still open at interpreter exit are closed then.
    """

    def __init__(self, workers: int = 1, limits: Limits | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not sys.platform.startswith("linux"):
            raise SandboxError(f"the sandbox needs Linux (memfd, pidfd, prctl), not {sys.platform}; run the "
                               "benchmark on Linux, in a VM or a container")
        self.limits = limits or Limits()
        self._servers = [_Server(self.limits) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Server] = queue.SimpleQueue()
        self._closed = False
        # Runs at close() or garbage collection or interpreter exit, whichever is first; holds no ref to self.
        self._finalizer = weakref.finalize(self, _stop_all, self._servers)
        for server in self._servers:
            server.start()
            self._idle.put(server)

    @property
    def workers(self) -> int:
        return len(self._servers)

    def run(self, code: str, timeout_ms: int = 100) -> RunResult:
        """Run `code` in a fresh child; never raises for anything the program does."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout_ms must be in (0, {MAX_TIMEOUT_MS}], got {timeout_ms}")
        if len(code) > self.limits.code_chars:
            raise ValueError(f"code is {len(code)} characters; Limits.code_chars is {self.limits.code_chars}")
        request = {"code": code, "timeout_ms": timeout_ms}
        server = self._checkout()
        try:
            for _attempt in range(2):
                try:
                    reply = server.call(request, timeout_ms / 1000 + REPLY_GRACE_S)
                    return RunResult(**reply)
                except _ServerDied:
                    if self._closed:
                        raise SandboxError("the sandbox was closed during the run") from None
                    # Killed from outside, or by the program (where signals are not scoped): start a fresh
                    # server and try once more; a program that kills it twice is reported as crashed.
                    server.stop()
            return RunResult(CRASHED, error="the sandbox server died during the run")
        finally:
            self._idle.put(server)

    @property
    def features(self) -> dict:
        """What isolation the kernel allowed (landlock_abi, fs_write_confined, ...); starts a server."""
        server = self._checkout()
        try:
            return dict(server.ensure_ready()["features"])
        finally:
            self._idle.put(server)

    def server_pids(self) -> list[int]:
        """Pids of the running servers (for tests and monitoring)."""
        return [s.proc.pid for s in self._servers if s.proc is not None and s.proc.poll() is None]

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _checkout(self) -> _Server:
        if self._closed:
            raise SandboxError("this Sandbox is closed; create a new one")
        return self._idle.get()
