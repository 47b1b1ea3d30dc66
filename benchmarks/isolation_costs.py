"""What each isolation mechanism costs per run, measured as the sandbox would pay it: the measurements
behind the choice of Landlock + a two-stage seccomp allowlist (see nanocodegen/sandbox.py).

    python benchmarks/isolation_costs.py              # 200 runs per mechanism, medians in microseconds
    python benchmarks/isolation_costs.py --runs 500 --json out.json

It runs in a clean interpreter like a sandbox server's (python -S, the sandbox's own modules loaded, no
torch) and forks a child per sample, as the server does, timing inside the child what the child would
do before a program runs. Rows:
  fork + exit + wait          the floor every design pays (the server's fork of a warm child)
  landlock ruleset (server)   building one child's ruleset: create + one rule (done by the server)
  landlock enforce (child)    the child confining itself to it
  seccomp, one stage          the whole allowlist as the child's first filter
  seccomp, two stages         the short child filter on top of the server's (the sandbox's choice)
  libseccomp (child)          the same allowlist through libseccomp (init, rules, load), if installed
  unshare net / user+...      a new network namespace, or user+mount+net+ipc, per child (per server
                              they would cost the same, once)
  exec python -S -c pass      the floor of any exec-per-run design (bubblewrap, nsjail, a fresh python)
  bwrap ... python            bubblewrap's own per-run cost on top, if bwrap is installed
  getppid / ioctl(TCGETS)     one system call, no filter vs. under both filters (getppid is cached as
                              always-allowed; ioctl is argument-checked, so it runs the child filter)
Nothing else should be running on the machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

if "nanocodegen" not in sys.modules and sys.flags.no_site == 0:
    # Re-run in a server-like interpreter: no site-packages, no torch.
    os.execv(sys.executable, [sys.executable, "-S", "-s", "-B", __file__, *sys.argv[1:]])

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nanocodegen"))
import sandbox_os  # noqa: E402
import sandbox_seccomp  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x40000000


def in_child(step, before=None, runs: int = 200) -> float | None:
    """Median microseconds of `step()` timed inside a freshly forked child (after `before()`, untimed);
    None if the step fails there."""
    samples = []
    for _ in range(runs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                if before:
                    before()
                t0 = time.perf_counter()
                step()
                os.write(w, repr(time.perf_counter() - t0).encode())
            finally:
                os._exit(0)
        os.close(w)
        out = os.read(r, 64)
        os.close(r)
        os.waitpid(pid, 0)
        if not out:
            return None
        samples.append(float(out) * 1e6)
    return statistics.median(samples)


def in_parent(step, runs: int = 200) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def fork_exit_wait() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def libseccomp_allowlist():
    """A step that builds and loads the allowlist with libseccomp, or None where it is not installed."""
    name = ctypes.util.find_library("seccomp")
    if not name:
        return None
    lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    table = sandbox_seccomp.ARCHITECTURES[os.uname().machine][1]
    numbers = sorted({table[n] for n in sandbox_seccomp.ALLOWED if n in table})

    def step():
        ctx = ctypes.c_void_p(lib.seccomp_init(0x00050000 | 38))  # SCMP_ACT_ERRNO(ENOSYS)
        for nr in numbers:
            lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0)  # SCMP_ACT_ALLOW
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")

    return step


def unshare(flags: int):
    def step():
        if _libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare")

    return step


def syscall_loop(nr: int, *args, n: int = 100_000):
    def step():
        call = _libc.syscall
        for _ in range(n):
            call(nr, *args)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="samples per row")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    runs = args.runs

    features = sandbox_os.prepare_server(disable=("seccomp",))  # no_new_privs and the rest, no filter yet
    machine = os.uname().machine
    server_filter, child_filter = sandbox_seccomp.server_filter(), sandbox_seccomp.child_filter()
    one_stage = sandbox_seccomp._fprog(sandbox_seccomp.assemble_server(machine))
    base = tempfile.mkdtemp(prefix="ncg-isolation-costs-")
    rows: dict[str, float | None] = {}
    try:
        rows["fork + exit + wait"] = in_parent(fork_exit_wait, runs)
        abi = features["landlock_abi"]
        if abi:
            build = lambda: os.close(sandbox_os.landlock_ruleset(base, abi))  # noqa: E731
            rows["landlock ruleset (server)"] = in_parent(build, runs)
            rulesets = []
            rows["landlock enforce (child)"] = in_child(
                lambda: sandbox_os.landlock_enforce(rulesets[-1]),
                before=lambda: rulesets.append(sandbox_os.landlock_ruleset(base, abi)), runs=runs)  # fmt: skip
        if server_filter is not None:
            rows["seccomp, one stage (child)"] = in_child(lambda: sandbox_seccomp.install(one_stage), runs=runs)
            rows["seccomp, two stages (child)"] = in_child(
                lambda: sandbox_seccomp.install(child_filter),
                before=lambda: sandbox_seccomp.install(server_filter), runs=runs)  # fmt: skip
        step = libseccomp_allowlist()
        rows["libseccomp allowlist (child)"] = in_child(step, runs=runs) if step else None
        rows["unshare net (child)"] = in_child(unshare(CLONE_NEWNET), runs=runs)
        rows["unshare user+mount+net+ipc (child)"] = in_child(
            unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC), runs=runs)  # fmt: skip
        python = [sys.executable, "-S", "-c", "pass"]
        rows["exec python -S -c pass"] = in_parent(lambda: subprocess.run(python, check=True), max(runs // 10, 10))
        bwrap = shutil.which("bwrap")
        bwrap_cmd = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--", *python] if bwrap else []
        rows["bwrap --unshare-all python -S -c pass"] = (
            in_parent(lambda: subprocess.run(bwrap_cmd, check=True), max(runs // 10, 10)) if bwrap else None)
        n = 100_000
        getppid, ioctl = sandbox_seccomp._X86_64["getppid"], sandbox_seccomp._X86_64["ioctl"]
        if machine == "aarch64":
            getppid, ioctl = sandbox_seccomp._AARCH64["getppid"], sandbox_seccomp._AARCH64["ioctl"]
        buf = ctypes.create_string_buffer(64)
        loops = (("getppid", syscall_loop(getppid, n=n)), ("ioctl(TCGETS)", syscall_loop(ioctl, 1, 0x5401, buf, n=n)))
        for name, loop in loops:
            rows[f"{name}, no filter (per call)"] = in_child(loop, runs=5) / n
            if server_filter is not None:
                both = lambda: (sandbox_seccomp.install(server_filter), sandbox_seccomp.install(child_filter))  # noqa: E731
                rows[f"{name}, both filters (per call)"] = in_child(loop, before=both, runs=5) / n
    finally:
        shutil.rmtree(base, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, Linux {os.uname().release} {machine}, Landlock ABI {features['landlock_abi']}, "
          f"{'root' if os.geteuid() == 0 else 'not root'}; load average {load:.1f}; medians of {runs} runs")
    for name, us in rows.items():
        print(f"  {name:42} {'n/a (not available here)' if us is None else f'{us:10.2f} us'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "load_average": load, "microseconds": rows}, f, indent=2)


if __name__ == "__main__":
    main()
