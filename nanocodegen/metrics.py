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


def _rates(episodes: list[dict], max_attempts: int) -> dict:
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
    summary = _rates(episodes, max_attempts)
    summary.update(
        {
            "attempts": len(attempts),
            "attempt_latency_ms_p50": percentile(latency, 50),
            "attempt_latency_ms_p90": percentile(latency, 90),
            "ttft_ms_p50": percentile([a["ttft_ms"] for a in attempts], 50),
            "verify_ms_p50": percentile([a["verify_ms"] for a in attempts], 50),
            "total_prompt_tokens": sum(e["total_prompt_tokens"] for e in episodes),
            "total_new_tokens": sum(e["total_new_tokens"] for e in episodes),
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
    groups = {
        "by_suite": lambda e: e.get("suite", ""),
        "by_tier": lambda e: str(e.get("tier", 0)),
        "by_phrasing": lambda e: "held_out" if e.get("held_out") else "trained",
    }
    for name, key in groups.items():
        split: dict[str, list[dict]] = {}
        for e in episodes:
            split.setdefault(key(e), []).append(e)
        summary[name] = {k: _rates(v, max_attempts) for k, v in sorted(split.items())}
    return summary
