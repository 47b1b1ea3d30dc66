"""Run untrusted Python in a fresh, disposable, locked-down process, fast, from a warm pool of servers.

    with Sandbox(workers=2) as box:
        r = box.run("result = sum(range(10))", timeout_ms=100)
        r.status, r.output  # ("ok", "45")
        box.run_tests(program, test, "has_close_elements", timeout_ms=3000).status  # "ok": tests passed

How it works. Each worker is a small server process (sandbox_server.py; the child's side is in
sandbox_child.py, the kernel calls in sandbox_os.py and sandbox_seccomp.py) started as a clean
interpreter (`python -S -s -P`, a fixed environment, PYTHONHASHSEED=0, TZ=UTC) that imports only small
stdlib modules and never torch, so forking it is cheap and safe however many threads the caller has.
Children are forked by the server's zygote (sandbox_zygote.py), a child of the server that does nothing
but fork, so that the server's own work never pays for the pages a fork write-protects; they are the
server's children all the same (CLONE_PARENT): it reaps them, sees their exit status, and they die with
it. A child is forked and set up before its request arrives (the next one is forked while the current program
runs, or after the reply when the caller leaves a gap; a used child is reaped in the caller's gap, or
after the next reply when requests come back to back), so neither fork, set-up nor exit counts against
the time limit or sits on a check's critical path; a child forked while the caller leaves gaps also warms
up the job's path during its set-up (sandbox_child.warm_up). A caller about to send a burst of checks back
to back (bench --batch) asks for children ahead (Sandbox.prefork): the servers fork them while the caller
generates the burst's programs, at idle priority, instead of one per check once the CPU is busy. Before a
program reaches a child, the server's checker (sandbox_checker.py: a long-lived process forked and
confined exactly like a run's child, which runs no program code) parses it, lints it (layer 1) and
compiles it, warm: ~0.1 ms for a HumanEval program, where a fresh child took ~0.6 ms and ~160
copy-on-write faults. A refused program, or a check-only request, never uses a child. The child loads the
code object and runs it as a module body with the real builtins and a fresh globals dict; `str(result)`
(or "None" when no global `result` exists) is the output. With tests, the test code (trusted: it comes
with the suite, and is compiled once by the client) runs next in the same namespace, then
`check(entry_point)`, as HumanEval's harness does.

The layers, each with what it stops and what it does not:

1. Source policy (sandbox_lint.py), in the checker, when the request names a policy: a lint with a clear
   message for the model (imports, exec/eval/open/__import__, dunder attributes and names, frame,
   generator and traceback internals, attribute walks in format strings, non-UTF-8 coding declarations).
   Parse errors of every kind (SyntaxError, and the RecursionError, MemoryError and ValueError of
   parser and compiler bombs) are `syntax_error`; a bomb that outgrows them hits the checker's time or
   memory limit (a run's limits), and any check that raised more than a SyntaxError ends the checker:
   the next request gets a fresh one. It is not a barrier: `eval` of a computed string, or an escape it
   does not know, gets past it, and then only layer 2 matters. The caller's process never parses
   untrusted code.
2. OS isolation, the barrier, in every child before its program runs (and in the checker before its
   first check):
   - Landlock (Linux >= 5.13): no reads, writes, exec or directory listings anywhere but the child's
     private, empty working directory (HOME and TMPDIR point there; after the run it is deleted, or
     kept for a later run if it is still empty and unchanged, the run's processes all dead), so no
     host files, task files or /proc entries of other processes. ABI >= 4: no TCP; ABI >= 6: no signals
     to processes outside the run. Imports work because the server loaded the allowed modules before
     forking (sandbox_child.AVAILABLE_MODULES); the child's import system finds nothing else.
   - A seccomp allowlist (sandbox_seccomp.py; x86_64 and aarch64) in two stages, the server's and each
     child's: the system calls a Python program needs and nothing else. No fork, clone, threads or
     exec; no sockets of any kind; no kill, tgkill, pidfd or ptrace, so no signalling or tracing of any
     process; no setrlimit, prctl, chmod or utimes; nothing through a foreign syscall ABI. Calls that
     could name another process work for the caller's own pid only. The server itself cannot exec or
     open sockets either.
   - Limits: a wall-clock SIGKILL from the server, which the program cannot catch, block or delay;
     RLIMIT_CPU as a backstop; RLIMIT_AS (memory); RLIMIT_FSIZE (caps stdout, stderr and files alike);
     RLIMIT_NOFILE; no core dumps; stdin is /dev/null; its own process group, killed when the run ends;
     PR_SET_PDEATHSIG so it dies with its server; RLIMIT_NPROC = 0 when not root.
   The result travels on a pipe whose write end sits at a high fd (the server holds the read end), never
   on stdout, so nothing a program prints can pass for a result; the server accepts a report only if it
   arrives complete within the time limit while stdout/stderr are below the cap, then kills the child
   without waiting for it; no complete report before the process ends is `crashed`, never success.
3. Nothing crosses runs: every child is a fresh fork of a zygote whose state no child can touch, and is
   SIGKILLed when its report arrives, so its threads (it cannot start any), finalizers, atexit hooks
   and buffered output die with it. Builtins it poisoned, modules it patched and files it wrote go
   with it. The server is a child subreaper and sweeps up anything that escaped the process group.
   The checker outlives runs but executes none of their code (CPython runs no Python code while it
   parses and compiles; the lint is ours), and a run cannot reach it: no signals, no ptrace, no
   shared files. Compiler warnings it prints are handed on to that run's stderr and go no further.

Without Landlock or seccomp (old kernels, other architectures; `nanocodegen doctor` says which),
`Sandbox` refuses to start unless the caller passes `allow_weak_isolation=True`, and `isolation` says
so, for the results' provenance.

What a run reports: `RunResult.status` is OK (ran to the end; judging the output is the verifier's job;
with tests: every test passed) or one of the failure outcomes, spelled as `nanocodegen.records.Outcome`
values:
  syntax_error   the program does not parse or compile
  unsafe         the source policy refused it (it did not run)
  wrong_output   with tests only: a test's assertion failed ("failed the test on line 12")
  runtime_error  an exception escaped, SystemExit and KeyboardInterrupt included: "ExcType: msg (line N)"
  timeout        still running at the wall-clock limit, killed with SIGKILL
  memory_limit   MemoryError, under the address-space limit
  output_limit   stdout or stderr reached the output cap, or a file reached the same size limit
  crashed        the process died without a well-formed result: a signal (segfault, C-stack overflow,
                 abort), os._exit(), or anything else that ends it before the child writes its report
Error texts are short and deterministic: no host paths, addresses, pids or timings.

What it does NOT guarantee:
  - The program runs in the same process as the child's epilogue, so a program that goes looking for
    the result fd can write a report of its own. That gains it a claimed output (which `result = ...`
    gives it anyway) or, with tests, a claimed pass (which an object whose __eq__ is always True gives
    it too, under HumanEval's harness as under ours); it cannot hide a timeout, a signal or an output
    flood (the server observes those itself), and it cannot reach other runs or the host. A report
    also carries the child's own CPU time, wall time and peak RSS; a forger can only lie about itself.
  - stat() is not a Landlock right: a program can learn whether a host path exists, and its size,
    owner and times (not its contents, nor a directory's entries). Only a mount namespace would hide
    them, and unprivileged user namespaces are off on many machines (Ubuntu's AppArmor policy, Docker's
    default seccomp profile), so the sandbox does not depend on them.
  - The allowed system calls are still kernel code: a kernel bug in one of them is in scope for an
    attacker, as in any seccomp sandbox.
  - CPU and memory are per process, not per run; with process creation blocked that is the same thing.
    No cgroup caps the host's total: `workers` children can together use workers x memory_bytes.
  - Without Landlock (see above) reads and writes are confined by file permissions only; without the
    seccomp filter, sockets, signals and (for root) fork are open.
  - cpu_ms and wall_ms cover the program's run (exec, str(result), the tests) as the child measures it;
    parsing, the lint and compiling are verification overhead, outside them (for timeouts and crashes:
    the server's clock and wait4, set-up included; a check that timed out or crashed in the checker
    reports cpu_ms 0, since the program never ran). peak_rss_bytes includes the ~10 to 20 MB the child
    inherits from the server.
"""

from __future__ import annotations

import marshal
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import weakref
from dataclasses import asdict, dataclass

from nanocodegen.sandbox_child import CRASHED, MAX_TIMEOUT_MS, OK, TEST_FILENAME
from nanocodegen.sandbox_lint import POLICIES
from nanocodegen.sandbox_os import HEADER, LAYER_SWITCHES, REQUIRED_LAYERS, encode_msg, missing_layers

__all__ = ["OK", "Limits", "RunResult", "Sandbox", "SandboxError"]

# Run as a script, never imported here: see its docstring.
_SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_server.py")
START_TIMEOUT_S = 30.0  # a server that has not said hello by then is not coming up
REPLY_GRACE_S = 10.0  # on top of the program's time limit, before a silent server counts as hung
TEST_CACHE_SIZE = 1024  # compiled test codes kept per Sandbox (HumanEval has 164)
# Test code is compiled here (see run_tests); its dubious literals are the suite's business, not the log's.
warnings.filterwarnings("ignore", module=re.escape(TEST_FILENAME))


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
    """One run. `output` is str(result) (cut to Limits.result_chars) when status is OK ("" for a run with
    tests, or a check), else None."""

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

    def __init__(self, limits: Limits, disable: tuple[str, ...]):
        self.limits, self.disable = limits, disable
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
        config = {"limits": asdict(self.limits), "disable": list(self.disable)}
        cmd = [
            sys.executable, "-S", "-s", "-P", "-B", "-X", "utf8", _SERVER_SCRIPT,
            str(theirs.fileno()), marshal.dumps(config).hex(), self.base_dir,
        ]  # fmt: skip
        # A fixed environment (PYTHON* variables from the caller would change the interpreter; the
        # caller's secrets must not reach programs) and a new session (Ctrl-C in the terminal reaches the
        # caller, which then closes the pool). HOME and TMPDIR are "." so that they name each child's
        # private working directory without a per-child update; TZ is set so that no child looks for
        # /etc/localtime, which it could not read. LD_BIND_NOW: the dynamic linker resolves every symbol
        # once, in the server, rather than on first call in each child (a lookup and a copied page each).
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "HOME": ".", "TMPDIR": ".", "TZ": "UTC"}
        env["LD_BIND_NOW"] = "1"
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
    """A pool of `workers` sandbox servers; its methods are thread-safe and run up to `workers` programs
    at once.

    Servers start in the background when the pool is made; the first run waits for its server's hello,
    and raises SandboxError if a layer of REQUIRED_LAYERS is missing on this machine, unless
    `allow_weak_isolation`. `disable_layers` turns layers off ("landlock", "seccomp"), for tests and
    measurements. A server that dies is restarted on the next run. Use as a context manager or call
    close(); pools still open at interpreter exit are closed then.
    """

    def __init__(
        self,
        workers: int = 1,
        limits: Limits | None = None,
        allow_weak_isolation: bool = False,
        disable_layers: tuple[str, ...] = (),
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not sys.platform.startswith("linux"):
            raise SandboxError(f"the sandbox needs Linux (memfd, pidfd, prctl), not {sys.platform}; run the "
                               "benchmark on Linux, in a VM or a container")
        unknown = sorted(set(disable_layers) - set(LAYER_SWITCHES))
        if unknown:
            raise ValueError(f"unknown layers {unknown} in disable_layers; choose from {list(LAYER_SWITCHES)}")
        self.limits = limits or Limits()
        self.allow_weak_isolation = allow_weak_isolation
        self._servers = [_Server(self.limits, tuple(disable_layers)) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Server] = queue.SimpleQueue()
        self._closed = False
        self._tests: dict[str, bytes] = {}  # test code -> its marshalled code object
        # Runs at close() or garbage collection or interpreter exit, whichever is first; holds no ref to self.
        self._finalizer = weakref.finalize(self, _stop_all, self._servers)
        for server in self._servers:
            server.start()
            self._idle.put(server)

    @property
    def workers(self) -> int:
        return len(self._servers)

    def run(self, code: str, timeout_ms: int = 100, policy: str = "") -> RunResult:
        """Run `code` in a fresh child, first checked by the source policy `policy` ("task" or "tests";
        "" for none); never raises for anything the program does."""
        return self._call(code, timeout_ms, policy)

    def run_tests(self, code: str, test: str, entry_point: str, timeout_ms: int = 3000, policy: str = ""):
        """Run `code`, then `test` (HumanEval's `def check(candidate): ...`) in the same namespace, then
        `check(<entry_point>)`: status OK iff every test passed.

        The test code is trusted (it comes with the suite, not from the model): it is compiled here, once
        per distinct text, and travels to the child as a code object. A test that does not compile is
        the caller's error (ValueError)."""
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            raise ValueError(f"entry_point must be an identifier, got {entry_point!r}")
        return self._call(code, timeout_ms, policy, test=self._compiled_test(test), entry_point=entry_point)

    def _compiled_test(self, test: str) -> bytes:
        compiled = self._tests.get(test)
        if compiled is None:
            if not isinstance(test, str):
                raise TypeError(f"test must be a str, got {type(test).__name__}")
            try:
                compiled = marshal.dumps(compile(test, TEST_FILENAME, "exec", dont_inherit=True))
            except (SyntaxError, ValueError) as e:
                raise ValueError(f"the test code does not compile: {e}") from None
            if len(self._tests) >= TEST_CACHE_SIZE:
                self._tests.clear()
            self._tests[test] = compiled
        return compiled

    def check(self, code: str, policy: str = "") -> RunResult:
        """Parse, lint (with `policy`) and compile `code` in a child without running it: OK, syntax_error
        or unsafe."""
        return self._call(code, 10_000, policy, check_only=True)

    def _call(self, code, timeout_ms, policy, test=None, entry_point="", check_only=False) -> RunResult:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout_ms must be in (0, {MAX_TIMEOUT_MS}], got {timeout_ms}")
        if len(code) > self.limits.code_chars:
            raise ValueError(f"code is {len(code)} characters; Limits.code_chars is {self.limits.code_chars}")
        if policy and policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES} or '' for none")
        job = {"code": code, "policy": policy, "check_only": check_only, "test": test, "entry_point": entry_point}
        request = {"job": job, "timeout_ms": timeout_ms}
        server = self._checkout()
        try:
            for _attempt in range(2):
                try:
                    self.require_isolation(server.ensure_ready()["features"])
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

    def prefork(self, n: int) -> int:
        """Before a burst of runs back to back (bench --batch, whose first programs all come at once):
        have the servers fork `n` children in all (at most sandbox_server.MAX_SPARES each) in the time
        before the burst's first request reaches each, at idle priority where the kernel allows, so that
        the burst's runs find them ready instead of each forking the next on a busy CPU. Returns at once
        with the number the servers took on; waits only while another thread holds a server. Unused
        spares (~0.5 MiB each) wait for a later request, or die at close()."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int of at least 0, got {n!r}")
        servers = [self._checkout() for _ in self._servers]
        taken = 0
        try:
            for i, server in enumerate(servers):
                share = n // len(servers) + (i < n % len(servers))
                self.require_isolation(server.ensure_ready()["features"])
                try:
                    taken += server.call({"prefork": share}, START_TIMEOUT_S)["prefork"]
                except _ServerDied:
                    server.stop()  # the next run starts another, as after any death
        finally:
            for server in servers:
                self._idle.put(server)
        return taken

    def require_isolation(self, features: dict | None = None) -> None:
        """Raise SandboxError if a layer of REQUIRED_LAYERS is missing and weak isolation was not allowed
        (every run checks this; call it to fail before a long job starts)."""
        missing = missing_layers(self.features if features is None else features)
        if missing and not self.allow_weak_isolation:
            what = "; ".join(f"{name}: {REQUIRED_LAYERS[name]}" for name in missing)
            raise SandboxError(
                f"this machine cannot isolate untrusted programs ({what}): run `nanocodegen doctor` for "
                "details; to run anyway, pass allow_weak_isolation=True (CLI: --allow-weak-isolation), "
                "which results record in their provenance"
            )

    @property
    def features(self) -> dict:
        """What isolation the kernel allowed (see sandbox_os.prepare_server); starts a server if none is up.
        Does not raise for missing layers."""
        server = self._checkout()
        try:
            return dict(server.ensure_ready()["features"])
        finally:
            self._idle.put(server)

    @property
    def isolation(self) -> dict:
        """The layers in force and whether weak isolation was allowed, for results' provenance."""
        features = self.features
        missing = missing_layers(features)
        return {
            "complete": not missing,
            "missing": missing,
            "allow_weak_isolation": self.allow_weak_isolation,
            "layers": {"source_policy": True, **features},
        }

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
