"""`--repeat N`: the same measurement N times, each in a fresh process, and how much its headline varies.

    nanocodegen bench --suite seed --repeat 5 --out runs/seed-x5
    nanocodegen loadgen --scenario SingleStream --quick --repeat 3 --out runs/ss-x3

Each repeat is the same command line without --repeat, written to OUT/run-K. OUT/repeat.json holds the
headline of each run, their median and the coefficient of variation (sample stdev / mean); MLPerf EDU
promotes a result only when that CV is at most `CV_LIMIT`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from nanocodegen.metrics import coefficient_of_variation

CV_LIMIT = 0.05
REPEAT_FILE = "repeat.json"


class RepeatError(RuntimeError):
    """A repeat failed; the message names it and where its output is."""


def without_flags(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """argv without the given flags; `flags` maps each flag to whether it takes a value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = flags[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def repeat_runs(argv: list[str], times: int, out_dir: Path) -> dict:
    """Run `nanocodegen ARGV --out OUT/run-K` for K = 1..times, one fresh process each; write OUT/repeat.json."""
    base = without_flags(argv, {"--repeat": True, "--out": True})
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for k in range(1, times + 1):
        run_dir = out_dir / f"run-{k}"
        command = [sys.executable, "-m", "nanocodegen", *base, "--out", str(run_dir)]
        print(f"repeat {k}/{times}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(command)
        if proc.returncode != 0:
            raise RepeatError(f"repeat {k} exited with code {proc.returncode}; its output is above and in {run_dir}")
        results = json.loads((run_dir / "results.json").read_text())
        runs.append({"out": str(run_dir), "id": results["id"], "headline": results["metrics"]["headline"]})
    values = [r["headline"]["value"] for r in runs]
    if any(v is None for v in values):
        raise RepeatError(f"a repeat has no headline value ({values}); see the runs in {out_dir}")
    cv = coefficient_of_variation(values)
    summary = {
        "command": base,
        "repeats": times,
        "headline": {**{k: v for k, v in runs[0]["headline"].items() if k != "value"}, "values": values,
                     "median": statistics.median(values), "mean": statistics.fmean(values),
                     "cv": cv},
        "cv_limit": CV_LIMIT,
        "promotable": cv is not None and cv <= CV_LIMIT,
        "runs": runs,
    }
    (out_dir / REPEAT_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary
