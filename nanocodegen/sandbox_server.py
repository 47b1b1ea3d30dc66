"""Sandbox server: runs untrusted Python, one disposable pre-forked child per program.

`nanocodegen.sandbox.Sandbox` starts this file as a script in a clean interpreter, so the server never
imports torch or the nanocodegen package (whose __init__ may):

    python -S -s -P -B -X utf8 nanocodegen/sandbox_server.py FD CONFIG BASE_DIR

CONFIG is {"limits": Limits as a dict, "disable": [layer names]}, marshalled and hex-encoded. The server
imports only small stdlib modules, because every page it maps is copied into each child's page tables at
fork and every page a child touches is copied on write; both are the per-run cost. The modules programs
may import (sandbox_child.AVAILABLE_MODULES) come in only with the first job that may import them (one
not under the `task` policy), since children cannot read them from disk. Children are forked by the
server's zygote (sandbox_zygote.py), which is forked again once the modules are loaded; one of them,
the checker (sandbox_checker.py), stays and parses, lints and compiles every program before a child runs
it. The server speaks length-prefixed marshal on the socket FD (sandbox_os.send_msg; the client is the
only peer): a hello {"pid", "features"}, then one reply per request {"job": {"code", "policy",
"check_only", "test", "entry_point"} (see Sandbox._call), "timeout_ms": int} or {"prefork": n} (see
Server.prefork); EOF means shut down. The child's side is sandbox_child.py, the kernel calls are in
sandbox_os.py, and what the isolation does and does not guarantee is written in nanocodegen/sandbox.py.
"""

from __future__ import annotations

import _signal  # the C half of `signal`, which would also import enum (a megabyte per child)
import errno
import gc
import marshal
import os
import resource
import select
import sys
import time
import unicodedata  # noqa: F401 - the parser imports it for any non-ASCII identifier; children cannot

# sandbox_child and sandbox_os sit next to this file. -P keeps this directory off sys.path: add it for these
# imports only, so that programs cannot import the package's other modules by name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_checker  # noqa: E402
import sandbox_os  # noqa: E402
import sandbox_zygote  # noqa: E402
from sandbox_child import (  # noqa: E402
    AVAILABLE_MODULES,
    CRASHED,
    HELPER_MODULES,
    LEN,
    MAX_ERROR_CHARS,
    MEMORY_LIMIT,
    OK,
    OUTPUT_LIMIT,
    RESULT_MAGIC,
    RUNTIME_ERROR,
    SYNTAX_ERROR,
    TIMEOUT,
    UNSAFE,
    WRONG_OUTPUT,
    format_size,
    warm_type_cache,
    warm_up,
)
from sandbox_zygote import Forker  # noqa: E402

del sys.path[0]

SETUP_TIMEOUT_S = 10.0  # a child that is not ready by then is broken, not slow
WARM_UP_RUNS = 16  # enough for 3.11's adaptive interpreter to specialise the job path's code
QUICK_S = 0.001  # a program done within this is answered before the next child is forked...
IDLE_S = 0.0005  # ...if the server waited at least this long for its request (else the caller is in a loop)
_DIR_0700 = 0o040700  # S_IFDIR | 0700 (no `stat` module: every module the server imports, each child carries)
FREE_DIRS = 4  # empty run directories (with their Landlock rulesets) kept for reuse; ~3 children live at once
MAX_SPARES = 64  # the most children a prefork request has ready at once (6 of the server's descriptors each)
_SIGKILL, _SIGXCPU, _SIGXFSZ = _signal.SIGKILL, _signal.SIGXCPU, _signal.SIGXFSZ
_SIGNAL_NAMES = {
    v: k for k, v in vars(_signal).items()
    if k.startswith("SIG") and not k.startswith("SIG_") and k not in ("SIGIOT", "SIGCLD", "SIGPOLL")
}  # fmt: skip


# --- the server: a pre-forked child waits ready; each request uses it up -----------------------------------


class SetupFailed(RuntimeError):
    """A child could not be set up (the kernel refused a limit or a Landlock call)."""


class _Child:
    # A plain class, not a dataclass: `dataclasses` imports `inspect` and `re` into every child.
    __slots__ = ("pid", "pidfd", "ready", "go", "out", "err", "res", "run", "reaped", "status", "usage")
    __slots__ += ("report", "watch")

    def __init__(self, pid, pidfd, ready, go, out, err, res, run):
        self.pid, self.pidfd, self.ready, self.go = pid, pidfd, ready, go
        self.out, self.err, self.res, self.run = out, err, res, run  # run: the run directory's number
        self.reaped, self.status, self.usage = False, 0, None
        self.report, self.watch = b"", [res, pidfd]  # what arrived on the result pipe; fds still open


class _Zygote:
    __slots__ = ("pid", "pidfd", "orders", "replies")

    def __init__(self, pid, pidfd, orders, replies):
        self.pid, self.pidfd, self.orders, self.replies = pid, pidfd, orders, replies


class Server:
    """Runs requests one at a time, each checked by the checker and then run in a child forked and set up
    before the request came. When the caller leaves gaps between requests (the agent loop: the model
    generates), the used child is reaped and the next one forked after the reply, in the gap, unless the
    program is still running after QUICK_S. When requests come back to back there is no gap to hide that
    work in: the next child is ordered from the zygote as a run starts and collected while the next
    request is checked, and a used child is reaped during the next request's check (SIGKILLed at its
    report, it has exited by then, so reaping it does not wait on its exit), or as soon as the caller
    pauses. (Keeping two spares in the pipe instead of one measured no faster: 1.01 and 0.95.) Before a
    burst, a prefork request has many spares forked while the caller is busy elsewhere (prefork()).

    A run's private directory is reused by a later run (with the Landlock ruleset built for it) only once
    its child is reaped, every process it left is killed and the directory is empty again, as a fresh one
    would be; otherwise it is removed.

    Children are forked by the zygote (sandbox_zygote.py), a child of the server that does nothing else,
    so that the server's own work between forks copies no pages; they are the server's children all the
    same (CLONE_PARENT). Where that is not available the server forks them itself.
    """

    def __init__(self, base_dir: str, limits: dict, features: dict):
        self.base_dir, self.limits, self.features = base_dir, limits, features
        self.pid = os.getpid()
        self.count = 0
        self.preloaded = False  # AVAILABLE_MODULES imported
        # Children warm up (sandbox_child.warm_up) while the caller leaves gaps between requests, where
        # that work is hidden; not when requests come back to back, where it would only add to each
        # (measured: with 1 worker on 2 cores too, where the warm-up competes with the running program).
        self.warm_children = True
        self.live: set[int] = set()  # children forked and not yet finished
        self.children_path = f"/proc/self/task/{self.pid}/children"
        self.used: _Child | None = None  # back to back: the last used child, killed, reaped one request later
        self.free_dirs: list[int] = []  # numbers of empty run directories, kept with their Landlock rulesets
        self.zygote: _Zygote | None = None
        self.checker: _Child | None = None  # the checker (sandbox_checker.py): every program's layer-1 check
        self.use_zygote = sandbox_os.CLONE_PARENT_WORKS  # False once this kernel refused the zygote's way
        self.forker: Forker | None = None  # where there is no zygote: the server forks children itself
        self.ordered: tuple[int, int] | None = None  # (run, flags) of a child ordered from the zygote, not collected
        self.spares: list[_Child] = []  # forked for the next requests, oldest first
        self.fill_to = 0  # a prefork request's number of spares, forked while no request waits (prefork())
        self.keep_dirs = FREE_DIRS  # free run directories kept (more once a prefork needed more)
        self.idle_fill = sandbox_os.idle_priority_reversible()  # prefork in SCHED_IDLE (see prefork())

    def serve(self, client: int) -> None:
        self.spares.append(self.spawn())
        try:
            while True:
                waited = time.perf_counter()
                if self.used is not None and not select.select([client], [], [], IDLE_S)[0]:
                    self.finish_used()  # no request came straight away: the caller left a gap after all
                if self.fill_to:
                    self.fill_spares(client)
                if (request := sandbox_os.recv_msg(client)) is None:
                    break
                if "prefork" in request:
                    sandbox_os.send_msg(client, {"prefork": self.prefork(request["prefork"])})
                    continue
                if self.fill_to:
                    self.end_prefork()
                quick_s = QUICK_S if time.perf_counter() - waited >= IDLE_S else 0.0
                self.warm_children = quick_s > 0
                if request["job"]["policy"] != "task" and not self.preloaded:
                    # Its child must have the modules a program may import: load them, and replace the
                    # spares, which were forked without them. Once per server.
                    self.collect()
                    while self.spares:
                        self.finish(self.spares.pop(0))
                    self.finish_used()
                    self.stop_zygote()  # its heap lacks them too
                    preload()
                    self.preloaded = True
                    self.spares.append(self.spawn())
                child = None
                try:
                    start = time.perf_counter()  # the program's time limit covers its check too
                    reply = self.check(request, start)  # (it collects the child on order meanwhile)
                    if "program" in reply:  # it passed: run it
                        child = self.spares.pop(0) if self.spares else self.spawn()
                        if not quick_s and self.ordered is None and not self.spares:
                            self.order()  # back to back: the zygote forks the next child while this runs
                        child = self.ready_child(child)
                        reply = self.run(child, request, reply, start, quick_s)
                except BaseException as e:
                    sandbox_os.send_msg(client, {"fatal": f"{type(e).__name__}: {e}"})
                    raise
                sandbox_os.send_msg(client, reply)
                if child is None:  # refused, only checked, or the check ran out of time: no child used
                    continue
                if quick_s:  # in the caller's gap: the next child first, so that it sets itself up meanwhile
                    self.collect()
                    if not self.spares:
                        self.spares.append(self.spawn())
                    self.finish(child)
                else:
                    # Back to back: this child is reaped during the next request's check (SIGKILLed at its
                    # report, it has exited by then, so wait4 does not wait on its exit). This request's
                    # check reaped the one before.
                    assert self.used is None, "check() reaps the child used a request ago"
                    self.used = child
        finally:
            try:
                self.collect()  # a child still on order (an error cut a request short)
            except (OSError, SetupFailed):
                pass  # the error that ended serving is the one to report; the child dies with the server
            while self.spares:
                self.finish(self.spares.pop(0))
            self.finish_used()
            self.retire_checker()
            self.stop_zygote()

    def prefork(self, n: int) -> int:
        """A caller about to send a burst of requests back to back (bench --batch, whose first programs
        all come at once) asks for `n` spares (at most MAX_SPARES): they are forked while no request
        waits, that is while the caller generates those programs, rather than one per request during the
        burst, when the CPU is busy. Until the next request, the zygote and the new spares are in the
        SCHED_IDLE class, so that this work takes only CPU time nothing else wants (where the server may
        take them out of it again, idle_fill; elsewhere at normal priority). Returns the number asked for."""
        self.fill_to = max(0, min(int(n), MAX_SPARES))
        self.keep_dirs = max(self.keep_dirs, self.fill_to + FREE_DIRS)
        return self.fill_to

    def fill_spares(self, client: int) -> None:
        """Fork spares (and the checker) up to fill_to, until a request comes; see prefork()."""
        self.warm_children = False  # made for requests back to back, where the warm-up is a loss
        if self.checker is None and not select.select([client], [], [], 0)[0]:
            self.ready_checker()
        if self.idle_fill and self.zygote is not None:
            sandbox_os.set_idle_priority(self.zygote.pid, True)
        while len(self.spares) < self.fill_to and not select.select([client], [], [], 0)[0]:
            self.spares.append(self.spawn())  # (the child on order, if there is one)

    def end_prefork(self) -> None:
        """The burst has begun: back to one spare at a time, and every process back at normal priority
        (a spare the kernel would not take back is not used)."""
        self.fill_to = 0
        if not self.idle_fill:
            return
        if self.zygote is not None and not sandbox_os.set_idle_priority(self.zygote.pid, False):
            self.stop_zygote()  # the next order starts another
        for child in list(self.spares):
            if not sandbox_os.set_idle_priority(child.pid, False):
                self.spares.remove(child)
                self.finish(child)

    def spawn(self, flags: int = 0) -> _Child:
        """Fork the next child (or take the one ordered); it sets itself up in parallel with whatever the
        server does next. `flags`: sandbox_zygote.CHECKER for the checker."""
        if self.ordered is None:
            self.order(flags)
        (run, flags), self.ordered = self.ordered, None
        pid, (ready, go, out, err, res) = self.fork_child(run, flags)
        self.live.add(pid)
        try:
            os.setpgid(pid, pid)  # the child does this too; doing it here as well closes the race
        except OSError:
            pass  # the child got there first, or already died (run() will see that)
        return _Child(pid, os.pidfd_open(pid), ready, go, out, err, res, run)

    def collect(self) -> None:
        """Take the child on order, if any, into the spares (waiting for the zygote's fork if need be)."""
        if self.ordered is not None:
            self.spares.append(self.spawn())

    def order(self, flags: int = 0) -> None:
        """Order the next child from the zygote, which forks it while the server goes on; spawn() takes
        it. (Without a zygote the fork waits for spawn().)"""
        assert self.ordered is None, "the child ordered before is not taken yet"
        self.count += 1
        run, new = (self.free_dirs.pop(), False) if self.free_dirs else (self.count, True)
        flags |= (sandbox_zygote.NEW if new else 0) | (sandbox_zygote.WARM if self.warm_children else 0)
        self.ordered = (run, flags)
        if self.zygote is None and self.forker is None:
            self.start_zygote()
        if self.zygote is not None:
            try:
                sandbox_os.write_all(self.zygote.orders, sandbox_zygote.ORDER.pack(sandbox_zygote.FORK, run, flags))
            except BrokenPipeError:
                pass  # the zygote died: fork_child finds out and starts another

    def fork_child(self, run: int, flags: int) -> tuple[int, list[int]]:
        """The pid of the child ordered for run directory `run` and the server's ends of its descriptors
        (see Forker.make)."""
        for attempt in range(2):
            if self.forker is not None:
                return self.forker.make(run, flags)
            zygote = self.zygote
            try:
                if attempt:  # to the zygote started after the first one died
                    sandbox_os.write_all(zygote.orders, sandbox_zygote.ORDER.pack(sandbox_zygote.FORK, run, flags))
                reply = sandbox_os.read_exact(zygote.replies, sandbox_zygote.REPLY.size)
            except (BrokenPipeError, EOFError):
                reply = None
            if reply is not None:
                pid, *fds = sandbox_zygote.REPLY.unpack(reply)
                try:
                    if pid < 0:
                        raise OSError(-pid, os.strerror(-pid))
                    return pid, _copy_fds(zygote.pidfd, fds)  # before the zygote's next order closes them
                except OSError as e:
                    if pid > 0:
                        _kill(pid)
                        os.waitpid(pid, 0)
                    if pid > 0 and e.errno in (errno.ESRCH, errno.EBADF):
                        reply = None  # the zygote died after it forked (its descriptors went with it): below
                if reply is not None:
                    # clone(CLONE_PARENT) or pidfd_getfd refused (a kernel older than 5.6, a ptrace policy
                    # such as Yama's scope 2): fork children here instead, as the server did before it
                    # had a zygote. (A fork that fails here too is the caller's error, as it always was.)
                    self.use_zygote = False
                    self.stop_zygote()
                    self.start_zygote()
                    self.count += 1  # the zygote may have made the directory
                    return self.forker.make(self.count, flags | sandbox_zygote.NEW)
            # The zygote died (killed from outside): start another, which knows no run directory yet.
            self.stop_zygote()
            self.start_zygote()
            if flags & sandbox_zygote.NEW:  # it may have made this one before it died
                self.count += 1
                run = self.count
        raise SetupFailed("the zygote died twice in a row")

    def start_zygote(self) -> None:
        """Fork the zygote from the server as it is now (heap settled, modules loaded or not); where
        the zygote's way does not work (use_zygote), make the Forker that the server uses itself instead."""
        forker = Forker(sandbox_os.clone_parent if self.use_zygote else os.fork, self.base_dir, self.limits,
                        self.pid, self.features["landlock_abi"])  # fmt: skip
        if not self.use_zygote:
            self.forker = forker
            return
        orders_r, orders_w = os.pipe()
        replies_r, replies_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # Nothing of the server's but the two pipes: not the client's socket, no child's descriptors.
            last = 2
            for fd in sorted((orders_r, replies_w)):
                os.closerange(last + 1, fd)
                last = fd
            os.closerange(last + 1, sandbox_os.MAX_FD)
            sandbox_zygote.zygote_main(forker, orders_r, replies_w)
        os.close(orders_r)
        os.close(replies_w)
        self.live.add(pid)
        # A new zygote has no ruleset yet: it builds one for each run directory it is given.
        self.zygote = _Zygote(pid, os.pidfd_open(pid), orders_w, replies_r)

    def stop_zygote(self) -> None:
        if self.forker is not None:
            self.forker.close()
            self.forker = None
        if self.zygote is None:
            return
        zygote, self.zygote = self.zygote, None
        _kill(zygote.pid)
        try:
            os.waitpid(zygote.pid, 0)
        except ChildProcessError:
            pass
        self.live.discard(zygote.pid)
        for fd in (zygote.pidfd, zygote.orders, zygote.replies):
            os.close(fd)

    def ready_child(self, child: _Child, flags: int = 0) -> _Child:
        """`child` once it is set up; a fresh one (forked with `flags`) if it was killed (from outside)
        while it waited."""
        for _attempt in range(2):
            if not select.select([child.ready], [], [], SETUP_TIMEOUT_S)[0]:
                raise SetupFailed(f"a child was not ready after {SETUP_TIMEOUT_S:.0f} s")
            ready = os.read(child.ready, 4096)
            if ready == b"R" and not select.select([child.pidfd], [], [], 0)[0]:  # ready and still alive
                return child
            if ready.startswith(b"E"):  # + why: the kernel refused part of the set-up, and will again
                raise SetupFailed(ready[1:].decode(errors="replace"))
            self.finish(child)
            child = self.spawn(flags)
        raise SetupFailed("two children in a row died during set-up")

    def check(self, request: dict, start: float) -> dict:
        """Parse, lint and compile the request's program in the checker, within the request's time limit
        from `start`. Returns {"program": its marshalled code object, "warnings": what compiling printed}
        for a program to run, else the reply: refused (syntax_error, unsafe), a check-only request's
        answer (ok), or the check's own timeout or crash (the checker is replaced then)."""
        job, timeout_ms = request["job"], request["timeout_ms"]
        checker = self.ready_checker()
        message = marshal.dumps({"code": job["code"], "policy": job["policy"]})
        checker.report = b""
        try:
            sandbox_os.write_all(checker.go, LEN.pack(len(message)) + message)
        except BrokenPipeError:
            pass  # it died just now (killed from outside); _wait sees it exit
        # While it checks: take the child on order, and reap the one used a request ago (back to back).
        self.collect()
        self.finish_used()
        state = self._wait(checker, start + timeout_ms / 1000, self.limits["memory_bytes"])
        reply = sandbox_checker.parse_reply(checker.report) if state == "report" else None
        if reply is None:  # out of time, or killed: classified as a run's child would be, then replaced
            self.checker = None
            _kill(checker.pid)
            self._reap(checker)
            wall_ms = (time.perf_counter() - start) * 1000
            # (Its stderr holds this check's compiler warnings only: every check that came back drained it.)
            failed = self._classify(checker, None, state == "running", wall_ms, timeout_ms)
            self.finish(checker)
            # cpu_ms: the checker's lifetime is not this program's; the program itself never ran.
            return {**failed, "cpu_ms": 0.0}
        warnings = _drain(checker.err)
        status, rss_kib, more, payload = reply
        if not more:  # it exits after this reply (an unclean check, or its last one): replace it now
            self.retire_checker()
        if status == OK and not job["check_only"]:
            return {"program": payload, "warnings": warnings}
        result = {"status": status, "stdout": "", "stderr": _text_tail(warnings, self.limits["tail_bytes"]),
                  "cpu_ms": 0.0, "wall_ms": 0.0, "peak_rss_bytes": rss_kib * 1024}  # fmt: skip
        if status == OK:
            return {**result, "output": "", "has_result": False, "truncated": False}
        return {**result, "error": payload.decode("utf-8", "surrogatepass")[: MAX_ERROR_CHARS * 2]}

    def ready_checker(self) -> _Child:
        """The checker, forked and set up first if there is none (the first request, or the last one
        ended it), or it died since its last check (killed from outside)."""
        checker = self.checker
        if checker is not None and not select.select([checker.pidfd], [], [], 0)[0]:
            return checker
        self.collect()  # (one order at a time)
        self.retire_checker()
        self.checker = self.ready_child(self.spawn(sandbox_zygote.CHECKER), sandbox_zygote.CHECKER)
        return self.checker

    def retire_checker(self) -> None:
        if self.checker is not None:
            checker, self.checker = self.checker, None
            self.finish(checker)

    def run(self, child: _Child, request: dict, checked: dict, start: float, quick_s: float) -> dict:
        """Run the checked program (check()'s result) in a ready child, within the request's time limit
        from `start`; returns the reply. If the program is still running after `quick_s` and no child is
        spare or on order, the next one is forked while it runs."""
        timeout_ms = request["timeout_ms"]
        # A backstop only: the wall-clock kill below comes first. Whole seconds, at least one to spare.
        cpu_s = int(timeout_ms / 1000) + 2
        resource.prlimit(child.pid, resource.RLIMIT_CPU, (cpu_s, cpu_s))
        if checked["warnings"]:  # the compiler's, first on the run's stderr, as if the child had compiled it
            sandbox_os.write_all(child.err, checked["warnings"])
        job = marshal.dumps({"program": checked["program"], "test": request["job"]["test"],
                             "entry_point": request["job"]["entry_point"]})  # fmt: skip
        running = time.perf_counter()
        try:
            sandbox_os.write_all(child.go, LEN.pack(len(job)) + job)
        except BrokenPipeError:
            pass  # the child died just now (killed from outside); _wait sees it exit
        deadline = start + timeout_ms / 1000
        state = self._wait(child, min(deadline, running + quick_s))
        if state == "running":
            if not self.spares and self.ordered is None:
                self.spares.append(self.spawn())  # a slow program: fork the next child while it runs
            state = self._wait(child, deadline)
        wall_ms = (time.perf_counter() - start) * 1000
        frame, timed_out = (child.report if state == "report" else None), state == "running"
        _kill(child.pid)  # done or out of time; a program that forged its report early stops here too
        _kill_group(child.pid)
        if frame is None:  # no report: the exit status says why, so reap now
            self._reap(child)
        return self._classify(child, frame, timed_out, wall_ms, timeout_ms)

    def _wait(self, child: _Child, until: float, limit: int = 0) -> str:
        """ "report" once child.report holds a complete one (or more than `limit` bytes), "exited" if the
        child ended without one, or "running" if `until` passed first (call again to wait longer)."""
        limit = limit or self.limits["result_chars"] * 4 + 4096
        while True:
            # Past `until` this still polls once, so a report that was in time counts even if the server
            # (busy forking the spare) looks late.
            readable = select.select(child.watch, [], [], max(0.0, until - time.perf_counter()))[0]
            if not readable:
                return "running"
            if child.res in readable:
                chunk = os.read(child.res, 65536)
                if not chunk:  # EOF: the child exited, or the program closed the channel
                    child.watch.remove(child.res)
                child.report += chunk
                if len(child.report) > limit or _frame_complete(child.report):
                    return "report"  # (one too long is not ours; _parse_frame rejects it)
            elif child.pidfd in readable:
                return "exited"

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
        self.recycle_dir(child.run)

    def finish_used(self) -> None:
        if self.used is not None:
            used, self.used = self.used, None
            self.finish(used)

    def recycle_dir(self, run: int) -> None:
        """Keep a dead run's directory for a later run if it is as a fresh one would be (empty, ours, 0700,
        not a link), else remove it. Its child is reaped and everything it left is killed (finish())."""
        run_dir = f"{self.base_dir}/run{run}"
        try:
            st = os.lstat(run_dir)
            fresh = st.st_mode & 0o177777 == _DIR_0700 and st.st_uid == os.geteuid()
            fresh = fresh and not os.listdir(run_dir)
        except OSError:
            fresh = False
        if fresh and len(self.free_dirs) < self.keep_dirs:
            self.free_dirs.append(run)
            return
        if self.forker is not None:
            self.forker.drop(run)
        elif self.zygote is not None:
            try:
                sandbox_os.write_all(self.zygote.orders, sandbox_zygote.ORDER.pack(sandbox_zygote.DROP, run, 0))
            except BrokenPipeError:
                pass  # the zygote died, and its rulesets with it
        sandbox_os.remove_tree(run_dir)

    def _reap(self, child: _Child) -> None:
        _, child.status, child.usage = os.wait4(child.pid, 0)
        child.reaped = True

    def sweep(self) -> None:
        """Kill what a program left behind. Its process group is already killed; a descendant that left
        the group is re-parented to this server (a child subreaper), so it shows up as our child here."""
        self.collect()  # a child on order is the server's child too, not yet in self.live: take it first
        for _ in range(100):  # each round kills one generation; a fork loop cannot outrun 100 of them
            # Never a child the server still needs (the spares, the checker).
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


_FRAME_HEAD = len(RESULT_MAGIC) + LEN.size


def _copy_fds(pidfd: int, fds: list[int]) -> list[int]:
    """Copies of descriptors `fds` of the process behind `pidfd`, all or none."""
    copies: list[int] = []
    try:
        for fd in fds:
            copies.append(sandbox_os.pidfd_getfd(pidfd, fd))
    except OSError:
        for fd in copies:
            os.close(fd)
        raise
    return copies


def _frame_complete(buf: bytes) -> bool:
    return len(buf) >= _FRAME_HEAD and len(buf) >= _FRAME_HEAD + LEN.unpack_from(buf, len(RESULT_MAGIC))[0]


def _parse_frame(frame: bytes) -> dict | None:
    """The child's report if it is one well-formed frame; anything else counts as no result."""
    if not frame.startswith(RESULT_MAGIC) or not _frame_complete(frame):
        return None
    if len(frame) != _FRAME_HEAD + LEN.unpack_from(frame, len(RESULT_MAGIC))[0]:
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
    if report["status"] in (SYNTAX_ERROR, UNSAFE, RUNTIME_ERROR, MEMORY_LIMIT, WRONG_OUTPUT):
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


def _drain(fd: int) -> bytes:
    """What the checker wrote to this memfd (its stderr) since the last drain; empties it. The checker is
    waiting for its next request, so nothing writes meanwhile."""
    size = os.fstat(fd).st_size
    if not size:
        return b""
    data = os.pread(fd, size, 0)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, 0)  # the offset is shared with the checker's fd 2: it writes from the start again
    return data


def _text_tail(data: bytes, n: int) -> str:
    return data[-n:].decode("utf-8", "replace")


def _tail(fd: int, size: int, n: int) -> str:
    return os.pread(fd, n, max(0, size - n)).decode("utf-8", "replace") if size else ""


def preload() -> None:
    """Import the modules programs may use, then settle the heap again (see main)."""
    for name in sorted(AVAILABLE_MODULES) + list(HELPER_MODULES):
        try:
            __import__(name)
        except ImportError:
            pass  # a Python built without it: programs that import it get ModuleNotFoundError
    settle_heap()


def settle_heap() -> None:
    for _ in range(WARM_UP_RUNS):  # lazy initialisation and specialisation, done here once (see warm_up)
        warm_up(check=sandbox_checker.check_source)
    warm_type_cache()  # last: a later lookup could take one of its cache entries
    # Every fork copies the page-table entries of the server's private memory, and every later write to
    # a shared page is a copy-on-write fault, in server and child alike: shed the import-time garbage,
    # hand free heap back to the kernel, and keep the collector from touching the objects that remain.
    gc.collect()
    sandbox_os.trim_heap()
    gc.freeze()


def main(argv: list[str]) -> None:
    client = int(argv[1])
    config, base_dir = marshal.loads(bytes.fromhex(argv[2])), argv[3]
    # Read by the dynamic linker at start-up (sandbox.py says why); programs need not see it.
    os.environ.pop("LD_BIND_NOW", None)
    try:
        features = sandbox_os.prepare_server(tuple(config["disable"]))
        server = Server(base_dir, config["limits"], features)
        sandbox_os.send_msg(client, {"pid": os.getpid(), "features": features})
        settle_heap()
        server.serve(client)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client died; its children die with this process (PR_SET_PDEATHSIG)
    finally:  # the client removes it too, unless it died first
        sandbox_os.remove_tree(base_dir)


if __name__ == "__main__":
    main(sys.argv)
