"""Summary metrics over episode records (plain dicts, as stored in results files)."""

from __future__ import annotations

from collections import Counter

from nanocodegen.records import Outcome


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rates(episodes: list[dict], max_attempts: int) -> dict:
    """Solve rates over episode dicts (each needs `solved` and `attempts_to_correct`)."""
    n = len(episodes)
    solved = [e for e in episodes if e["solved"]]
    to_correct = [e["attempts_to_correct"] for e in solved]
    return {
        "tasks": n,
        "solved": len(solved),
        "solve_rate": len(solved) / n if n else 0.0,
        "pass_at_1": sum(1 for k in to_correct if k == 1) / n if n else 0.0,
        # share of tasks that were not solved by the first attempt (retried, solved or not)
        "needed_retry": sum(1 for e in episodes if e["attempts_to_correct"] != 1) / n if n else 0.0,
        "solved_within": {str(k): sum(1 for a in to_correct if a <= k) / n if n else 0.0
                          for k in range(1, max_attempts + 1)},
        "mean_attempts_to_correct": sum(to_correct) / len(to_correct) if to_correct else None,
    }


def summarize(episodes: list[dict], max_attempts: int, wall_seconds: float | None = None) -> dict:
    """The `summary` block of results.json."""
    attempts = [a for e in episodes for a in e["attempts"] if a["outcome"] != Outcome.CONTEXT_OVERFLOW]
    latency = [a["prefill_ms"] + a["decode_ms"] + a["verify_ms"] for a in attempts]
    gen_ms = sum(a["prefill_ms"] + a["decode_ms"] for a in attempts)
    new_tokens = sum(a["new_tokens"] for a in attempts)
    summary = rates(episodes, max_attempts)
    summary.update(
        {
            "attempts": len(attempts),
            "attempt_latency_ms_p50": percentile(latency, 50),
            "attempt_latency_ms_p90": percentile(latency, 90),
            "ttft_ms_p50": percentile([a["ttft_ms"] for a in attempts], 50),
            "verify_ms_p50": percentile([a["verify_ms"] for a in attempts], 50),
            "total_prompt_tokens": sum(e["total_prompt_tokens"] for e in episodes),
            "total_new_tokens": sum(e["total_new_tokens"] for e in episodes),
            # the rate an attempt generates at (tokens over the attempts' own prefill + decode time); in a
            # batched run attempts overlap, so the run's throughput is `generated_tokens_per_wall_s`
            "tokens_per_s": new_tokens / (gen_ms / 1e3) if gen_ms else None,
            "time_ms": {
                "prefill": sum(a["prefill_ms"] for a in attempts),
                "decode": sum(a["decode_ms"] for a in attempts),
                "verify": sum(a["verify_ms"] for a in attempts),
            },
            "outcomes": dict(Counter(a["outcome"] for e in episodes for a in e["attempts"])),
            "max_kv_cache_bytes": max((a["kv_cache_bytes"] for a in attempts), default=0),
        }
    )
    if wall_seconds is not None:
        summary["wall_s"] = wall_seconds
        summary["tasks_per_s"] = len(episodes) / wall_seconds if wall_seconds else None
        summary["generated_tokens_per_wall_s"] = summary["total_new_tokens"] / wall_seconds if wall_seconds else None
    groups = {
        "by_suite": lambda e: e.get("suite", ""),
        "by_tier": lambda e: str(e.get("tier", 0)),
        "by_phrasing": lambda e: "held_out" if e.get("held_out") else "trained",
    }
    for name, key in groups.items():
        split: dict[str, list[dict]] = {}
        for e in episodes:
            split.setdefault(key(e), []).append(e)
        summary[name] = {k: rates(v, max_attempts) for k, v in sorted(split.items())}
    return summary


# The workload's quality target, stated once: on the synthetic test split, with greedy decoding and the
# default attempt budget, at least 95 % of the tasks are solved. (The seed suite's 8/8 is checked by the tests.)
QUALITY_SUITE = "synthetic"
QUALITY_METRIC = "synthetic_test_solve_rate"
QUALITY_TARGET = 0.95


def quality(episodes: list[dict], split_tasks: int) -> dict:
    """The report's `quality` block from episode records (only those of the quality suite count).

    `split_tasks` is the size of the whole split: a run that covered only part of it gets a value but
    no verdict (`target_met` None), since a subset says nothing about the target."""
    scored = [e for e in episodes if e.get("suite") == QUALITY_SUITE]
    value = sum(1 for e in scored if e["solved"]) / len(scored) if scored else None
    complete = len({e["id"] for e in scored}) == split_tasks
    return {
        "metric": QUALITY_METRIC,
        "target": QUALITY_TARGET,
        "direction": "higher",
        "quality_required": True,
        "value": value,
        "target_met": (value >= QUALITY_TARGET) if value is not None and complete else None,
        "tasks": len(scored),
        "split_tasks": split_tasks,
    }


def verdict(q: dict) -> str:
    """PASS, FAIL, or why there is no verdict, for printing."""
    if q["target_met"] is None:
        why = q.get("note") or (f"{q['tasks']} of {q['split_tasks']} tasks" if q["tasks"] else "no tasks")
        return f"NOT EVALUATED ({why})"
    return "PASS" if q["target_met"] else "FAIL"


# The one number each kind of run is judged by (`--repeat` reports its coefficient of variation): name in
# the report's `metrics`, unit, and whether higher is better. A timing, except in LoadGen's accuracy mode.
HEADLINES = {
    "accuracy": ("solve_rate", "fraction of tasks", "higher"),
    "bench": ("tasks_per_s", "tasks/s", "higher"),
    "SingleStream": ("latency_ms_p90", "ms", "lower"),
    "Offline": ("samples_per_s", "samples/s", "higher"),
    "Server": ("completed_samples_per_s", "samples/s", "higher"),
}


def bench_metrics(summary: dict) -> dict:
    """The report's flat `metrics` block for a bench run, from its summary."""
    keys = ("tasks", "solved", "solve_rate", "pass_at_1", "mean_attempts_to_correct", "attempts",
            "attempt_latency_ms_p50", "attempt_latency_ms_p90", "ttft_ms_p50", "verify_ms_p50", "tokens_per_s",
            "total_prompt_tokens", "total_new_tokens", "tasks_per_s", "generated_tokens_per_wall_s", "wall_s",
            "peak_rss_bytes",
            "max_kv_cache_bytes")
    metrics = {k: summary.get(k) for k in keys}
    metrics.update(time_shares(summary.get("time_ms", {})))
    return metrics


def time_shares(time_ms: dict) -> dict:
    """Share of model + verifier time spent in prefill, decode and verify."""
    total = sum(time_ms.values())
    return {f"{k}_share": (v / total if total else None) for k, v in time_ms.items()}


def coefficient_of_variation(values: list[float]) -> float | None:
    """Sample standard deviation over mean; None for fewer than two values or a zero mean."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return var**0.5 / abs(mean)
