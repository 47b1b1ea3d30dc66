"""Pictures of a run: what each attempt cost as its context grew.

    plot_attempts(results["episodes"], "prefix", "runs/x/attempts.png")   # one cache mode (every bench run)
    plot_modes({"none": eps, "attempt": eps, "prefix": eps}, "modes.png")  # the three side by side

Left panel: an attempt's generation latency (prefill + decode, ms) against its context length. Right
panel: the prompt tokens it computed in prefill against the same axis. Without a cache surviving the
attempt, prefill grows with the context; with prefix reuse it stays at the few tokens appended since.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from nanocodegen.records import Outcome  # noqa: E402

MODE_COLORS = {"none": "tab:red", "attempt": "tab:orange", "prefix": "tab:green"}


def _generated(episodes: list[dict]) -> list[dict]:
    return [a for e in episodes for a in e["attempts"] if a["outcome"] != Outcome.CONTEXT_OVERFLOW]


def _panels(title: str):
    fig, (lat, pre) = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.suptitle(title)
    lat.set_xlabel("context length (prompt tokens)")
    lat.set_ylabel("generation latency per attempt (ms)")
    pre.set_xlabel("context length (prompt tokens)")
    pre.set_ylabel("prompt tokens computed in prefill")
    for ax in (lat, pre):
        ax.grid(alpha=0.3)
    return fig, lat, pre


def plot_attempts(episodes: list[dict], kv_cache: str, path: str | Path) -> Path:
    """One point per attempt, coloured by attempt number; returns the PNG's path."""
    attempts = _generated(episodes)
    fig, lat, pre = _panels(f"nanocodegen bench: {len(attempts)} attempts, --kv-cache {kv_cache}")
    if attempts:
        x = [a["context_tokens"] for a in attempts]
        colour = [a["attempt"] for a in attempts]
        points = lat.scatter(x, [a["prefill_ms"] + a["decode_ms"] for a in attempts], c=colour, s=10,
                             cmap="viridis", vmin=1)
        pre.scatter(x, [a["prefill_tokens"] for a in attempts], c=colour, s=10, cmap="viridis", vmin=1)
        fig.colorbar(points, ax=pre, label="attempt", ticks=range(1, max(colour) + 1))  # whole attempts only
    return _save(fig, path)


def plot_modes(by_mode: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """The cache modes on one chart, one colour each: every attempt as a faint point, and a line through
    the medians of each attempt number (1st, 2nd, ... attempt of the episodes). `by_mode` maps a mode
    to its episodes."""
    fig, lat, pre = _panels(title or "what a retry costs, by KV-cache mode")
    styles = {"none": ":", "attempt": "--", "prefix": "-"}  # none and attempt prefill the same tokens
    for mode, episodes in by_mode.items():
        attempts = _generated(episodes)
        colour = MODE_COLORS.get(mode)
        latency = lambda a: a["prefill_ms"] + a["decode_ms"]
        lat.scatter([a["context_tokens"] for a in attempts], [latency(a) for a in attempts], s=6, alpha=0.25,
                    color=colour)
        by_number: dict[int, list[dict]] = {}
        for a in attempts:
            by_number.setdefault(a["attempt"], []).append(a)
        numbers = sorted(by_number)
        x = [median(a["context_tokens"] for a in by_number[k]) for k in numbers]
        lat.plot(x, [median(latency(a) for a in by_number[k]) for k in numbers], "o" + styles.get(mode, "-"),
                 ms=4, color=colour, label=mode)
        pre.plot(x, [median(a["prefill_tokens"] for a in by_number[k]) for k in numbers],
                 "o" + styles.get(mode, "-"), ms=4, color=colour, label=mode)
    lat.legend(title="--kv-cache")
    pre.legend(title="--kv-cache")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
