"""Per-check overhead of CodeVerifier.verify() on a trivial program, measured from a torch process.

    python benchmarks/sandbox_overhead.py                 # 500 checks per setting, workers 1 and 2
    python benchmarks/sandbox_overhead.py --checks 2000 --workers 1 2 4 --gap-ms 0 5 --json out.json
    python benchmarks/sandbox_overhead.py --work 300000 --gap-ms 0   # programs that compute ~10 ms
    python benchmarks/sandbox_overhead.py --disable-layers seccomp   # what a layer costs (weak isolation)

For each worker count and each gap it reports, over `--checks` sequential calls of verify("result = 1",
"1") (or of a program that sums `--work` numbers) with `gap` ms of sleep between calls (0: back to back,
the worst case; a few ms: the agent loop, where the model generates between checks), the latency of the
call, the program's own run time as the sandbox measured it (exec + str(result); parsing, the lint and
compiling count as overhead), and overhead = latency - own time, as medians and 90th percentiles; then
the throughput of `--checks` back-to-back calls over 2 x workers threads. Nothing else should be running
on the machine; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch  # first, as in the benchmark proper: the sandbox must not pay for it

from nanocodegen.records import Outcome
from nanocodegen.verifier import CodeVerifier

EXPECTED = "1"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(code: str, workers: int, checks: int, warmup: int, gap_ms: float, disable: tuple[str, ...]) -> dict:
    with CodeVerifier(workers=workers, allow_weak_isolation=bool(disable), disable_layers=disable) as verifier:
        for _ in range(warmup):
            assert verifier.verify(code, EXPECTED).outcome is Outcome.CORRECT
        latency, own = [], []
        for _ in range(checks):
            if gap_ms:
                time.sleep(gap_ms / 1000)
            t0 = time.perf_counter()
            verdict = verifier.verify(code, EXPECTED)
            latency.append((time.perf_counter() - t0) * 1000)
            own.append(verdict.wall_ms)
            assert verdict.outcome is Outcome.CORRECT, verdict
        overhead = [a - b for a, b in zip(latency, own, strict=True)]

        with ThreadPoolExecutor(max_workers=2 * workers) as pool:
            t0 = time.perf_counter()
            verdicts = list(pool.map(lambda _: verifier.verify(code, EXPECTED), range(checks)))
            elapsed = time.perf_counter() - t0
        assert all(v.outcome is Outcome.CORRECT for v in verdicts)
    return {
        "workers": workers,
        "gap_ms": gap_ms,
        "checks": checks,
        "latency_ms_median": statistics.median(latency),
        "latency_ms_p90": percentile(latency, 0.9),
        "own_run_ms_median": statistics.median(own),
        "overhead_ms_median": statistics.median(overhead),
        "overhead_ms_p90": percentile(overhead, 0.9),
        "checks_per_s": checks / elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=500, help="checks per measurement")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured checks first")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--gap-ms", type=float, nargs="+", default=[0, 5], help="sleep between checks")
    parser.add_argument("--work", type=int, default=0, help="the program sums range(WORK) (0: result = 1)")
    parser.add_argument("--disable-layers", nargs="+", default=[], choices=("landlock", "seccomp"),
                        help="turn sandbox layers off, to measure what they cost")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    code = f"result = sum(range({args.work})) * 0 + 1" if args.work else "result = 1"

    torch.set_num_threads(2)
    torch.ones(1 << 16).sum()  # torch's thread pool is up, as it is mid-benchmark
    disable = tuple(args.disable_layers)
    with CodeVerifier(allow_weak_isolation=bool(disable), disable_layers=disable) as probe:
        features = probe.sandbox.features
    load_before = os.getloadavg()[0]
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"Linux {platform.release()}, load average {load_before:.1f}")
    print(f"sandbox features: {features}")
    print(f"{'workers':>7} {'gap':>5} {'latency med':>12} {'p90':>7} {'own run':>8} {'overhead med':>13} "
          f"{'p90':>7} {'checks/s':>9}")
    results = []
    for workers in args.workers:
        for gap_ms in args.gap_ms:
            r = measure(code, workers, args.checks, args.warmup, gap_ms, disable)
            results.append(r)
            print(f"{workers:>7} {gap_ms:>5g} {r['latency_ms_median']:>9.3f} ms {r['latency_ms_p90']:>7.3f} "
                  f"{r['own_run_ms_median']:>8.3f} {r['overhead_ms_median']:>10.3f} ms "
                  f"{r['overhead_ms_p90']:>7.3f} {r['checks_per_s']:>9.0f}")
    load_after = os.getloadavg()[0]
    print(f"load average {load_before:.1f} before, {load_after:.1f} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"features": features, "argv": sys.argv, "code": code, "results": results,
                       "load_average": [load_before, load_after]}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
