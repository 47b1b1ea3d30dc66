"""The sandbox server's zygote: a process that only forks children, so that forking dirties next to nothing.

Why: fork() write-protects every private page of the forking process, and each page it writes afterwards
is copied (a copy-on-write fault, ~2 us each on the project's VM). The server's own loop (requests,
replies, classifying, reaping) wrote ~185 pages between two forks, so it took ~185 such faults per run;
this loop writes ~50 (benchmarks/sandbox_cpu.py measures both). The zygote is forked from the server
once its heap is settled (and again after the server preloads the modules programs may import) and keeps
that heap unchanged, since children are copies of it. It forks with CLONE_PARENT
(sandbox_os.clone_parent), so every child is the server's own child, as if the server had forked it: the
server reaps it, kills its group and sees its exit status, and it dies with the server
(PR_SET_PDEATHSIG); the zygote never waits for anything but its next order.

Each child's descriptors are made here, before the fork (the child's ends stay in the child); the server
copies its ends out of the zygote with pidfd_getfd (the zygote is its child, which it may trace), and the
zygote closes them when its next order comes. Landlock rulesets, one per run directory, live here too,
since the child inherits its ruleset across the fork. Where clone(CLONE_PARENT) or pidfd_getfd is not
available (another architecture, Linux before 5.6, a ptrace policy such as Yama's scope 2), the server
uses a Forker itself, with os.fork, as it did before it had a zygote.

Standard library only; imported by the server script (see sandbox_server.py), and by the tests.
"""

from __future__ import annotations

import os
import struct

if __package__:  # nanocodegen.sandbox_zygote, imported by the tests
    from nanocodegen import sandbox_checker, sandbox_os
    from nanocodegen.sandbox_child import child_main, seal_imports
else:  # imported by the server script, which has put this directory on sys.path for the moment
    import sandbox_checker
    import sandbox_os
    from sandbox_child import child_main, seal_imports

# The zygote's wire, fixed-size so that its loop allocates next to nothing. An order: (op, run number,
# flags); op FORK replies with (pid, then the 5 server ends of Forker.make), pid = -errno if it failed;
# op DROP has no reply.
ORDER = struct.Struct("=3i")
REPLY = struct.Struct("=6i")
FORK, DROP = 1, 2
# Flags of a FORK: make the run directory first; warm the child up (sandbox_child.warm_up); the child is to
# be the checker (sandbox_checker.py) rather than a run's.
NEW, WARM, CHECKER = 1, 2, 4


class Forker:
    """Makes children: a run directory's Landlock ruleset (kept per run number for reuse), the
    descriptors, and the fork. `fork` is sandbox_os.clone_parent in the zygote, os.fork in a server
    without one."""

    def __init__(self, fork, base_dir: str, limits: dict, server_pid: int, landlock_abi: int):
        self.fork, self.base_dir, self.limits = fork, base_dir, limits
        self.server_pid, self.landlock_abi = server_pid, landlock_abi
        self.rulesets: dict[int, int] = {}  # run number -> Landlock ruleset fd (-1 without Landlock)

    def make(self, run: int, flags: int) -> tuple[int, tuple[int, int, int, int, int]]:
        """Fork a child for run directory `run` (made first if flags has NEW); return its pid and the
        server's ends: (ready pipe (read), go pipe (write), stdout memfd, stderr memfd, result pipe (read))."""
        ruleset = self.rulesets.get(run)
        if ruleset is None:
            ruleset = self.rulesets[run] = self._ruleset(run, flags & NEW)
        made = []
        try:
            made += os.memfd_create("stdout"), os.memfd_create("stderr")
            made += os.pipe()
            made += os.pipe()
            made += os.pipe()
            pid = self.fork()
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        out, err, ready_r, ready_w, go_r, go_w, res_r, res_w = made
        if pid == 0:
            serve = None
            if flags & CHECKER:
                sandbox_os.set_name(sandbox_checker.NAME)  # now: the child's seccomp filter refuses prctl
                serve = sandbox_checker.serve_checks
            child_main((ready_w, go_r, out, err, res_w), f"{self.base_dir}/run{run}", ruleset, self.limits,
                       self.server_pid, flags & WARM, serve)  # fmt: skip
        os.close(ready_w)
        os.close(go_r)
        os.close(res_w)
        return pid, (ready_r, go_w, out, err, res_r)

    def _ruleset(self, run: int, new: bool) -> int:
        run_dir = f"{self.base_dir}/run{run}"
        if new:
            os.mkdir(run_dir, 0o700)
        return sandbox_os.landlock_ruleset(run_dir, self.landlock_abi)

    def drop(self, run: int) -> None:
        """Forget run directory `run` (the server removed it): close its ruleset."""
        ruleset = self.rulesets.pop(run, -1)
        if ruleset >= 0:
            os.close(ruleset)

    def close(self) -> None:
        for run in list(self.rulesets):
            self.drop(run)


def zygote_main(forker: Forker, orders: int, replies: int) -> None:
    """The zygote's loop (ORDER and REPLY on the two pipes); never returns. EOF on `orders` (the server
    closed it, or died) ends the zygote."""
    try:
        sandbox_os.die_with_parent()
        if os.getppid() != forker.server_pid:  # the server died before the line above took effect
            os._exit(0)
        seal_imports()  # once here rather than in every child: this loop imports nothing
        read, write, close, make = os.read, os.write, os.close, forker.make
        unpack, pack = ORDER.unpack, REPLY.pack
        held = ()  # the last child's server ends: the server has copied them before its next order
        while len(order := read(orders, ORDER.size)) == ORDER.size:  # (a pipe delivers whole small writes)
            op, run, flags = unpack(order)
            if op == DROP:
                forker.drop(run)
                continue
            for fd in held:
                close(fd)
            try:
                pid, held = make(run, flags)
                write(replies, pack(pid, *held))
            except OSError as e:
                held = ()
                write(replies, pack(-(e.errno or 1), 0, 0, 0, 0, 0))
    finally:
        os._exit(0)
