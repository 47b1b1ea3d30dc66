"""Two runs' metrics side by side, with ratios.

    nanocodegen compare runs/bench-a runs/bench-b

Rows are the numeric entries of each results.json's `metrics` (headline first) and the quality value;
the ratio is B / A. Settings that differ between the runs (checkpoint, scenario, attempts...) are listed
first, since they explain a difference before the machine does.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from nanocodegen.report import load_run

# Settings worth naming when two runs differ in them (config keys), and provenance keys likewise.
COMPARED_SETTINGS = ("scenario", "mode", "quick", "max_attempts", "max_new_tokens", "temperature", "top_k",
                     "kv_cache", "withhold_feedback", "device", "tasks")
COMPARED_PROVENANCE = ("checkpoint_sha256", "git_commit", "torch", "torch_threads")


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    """{"rows": [(metric, a, b, b/a)], "differences": [(what, a, b)], "ids": (folder a, folder b)}."""
    (a, _), (b, _) = load_run(run_a), load_run(run_b)
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    head_a, head_b = ma.get("headline", {}), mb.get("headline", {})
    keys = [head_a.get("name")] if head_a.get("name") else []
    keys += [k for k in list(ma) + [k for k in mb if k not in ma] if k not in keys]
    rows = []
    for key in keys:
        va, vb = _number(ma.get(key)), _number(mb.get(key))
        if va is None and vb is None:
            continue
        ratio = vb / va if va not in (None, 0.0) and vb is not None else None
        rows.append((key, va, vb, ratio))
    qa, qb = _number(a.get("quality", {}).get("value")), _number(b.get("quality", {}).get("value"))
    if qa is not None or qb is not None:
        rows.append((f"quality: {a.get('quality', {}).get('metric')}", qa, qb,
                     qb / qa if qa and qb is not None else None))
    differences = []
    for key in ("workload", "profile", "backend", "data_mode", "seed"):
        if a.get(key) != b.get(key):
            differences.append((key, a.get(key), b.get(key)))
    for key in COMPARED_SETTINGS:
        if a.get("config", {}).get(key) != b.get("config", {}).get(key):
            differences.append((key, a.get("config", {}).get(key), b.get("config", {}).get(key)))
    for key in COMPARED_PROVENANCE:
        if a.get("provenance", {}).get(key) != b.get("provenance", {}).get(key):
            differences.append((key, a.get("provenance", {}).get(key), b.get("provenance", {}).get(key)))
    ha, hb = a.get("provenance", {}).get("hardware", {}), b.get("provenance", {}).get("hardware", {})
    for key in ("cpu", "cores", "gpu"):
        if ha.get(key) != hb.get(key):
            differences.append((key, ha.get(key), hb.get(key)))
    return {"rows": rows, "differences": differences, "ids": (str(run_a), str(run_b)),
            "headline": head_a or head_b}


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def print_comparison(console: Console, comparison: dict) -> None:
    id_a, id_b = comparison["ids"]
    if comparison["differences"]:
        diff = Table(title="The runs differ in", show_header=True)
        for column in ("setting", f"A: {id_a}", f"B: {id_b}"):
            diff.add_column(column)
        for what, va, vb in comparison["differences"]:
            diff.add_row(what, str(va), str(vb))
        console.print(diff)
    table = Table(title=f"A = {id_a}   B = {id_b}", show_header=True)
    table.add_column("metric")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B / A", justify="right")
    headline = comparison["headline"].get("name")
    for key, va, vb, ratio in comparison["rows"]:
        label = f"{key} (headline, {comparison['headline'].get('better')} is better)" if key == headline else key
        table.add_row(label, _fmt(va), _fmt(vb), "–" if ratio is None else f"{ratio:.3f}")
    console.print(table)
