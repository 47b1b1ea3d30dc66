"""The benchmark: run the agent over task suites and write results.

    nanocodegen bench                                  # seed + synthetic test split, shipped model
    nanocodegen bench --suite seed --max-attempts 3 --out runs/seed
    nanocodegen bench --tasks my_tasks.jsonl --checkpoint runs/train

Writes OUT/episodes.jsonl (one line per finished task, as it finishes) and OUT/results.json
(config, provenance, every episode and the summary; rewritten as the run goes and at the end).
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nanocodegen.agent import Agent
from nanocodegen.checkpoint import checkpoint_sha256, default_checkpoint, load_checkpoint
from nanocodegen.config import AgentConfig
from nanocodegen.metrics import summarize
from nanocodegen.provenance import provenance
from nanocodegen.tasks import Task, load_suite, read_tasks
from nanocodegen.train import progress_bar

DEFAULT_SUITES = ("seed", "synthetic")
RESULTS_FILE, EPISODES_FILE = "results.json", "episodes.jsonl"


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible; use --device cpu or auto")
        if name == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps: MPS is not available here; use --device cpu or auto")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def collect_tasks(suites: list[str] | None, tasks_file: str | None, limit: int | None) -> list[tuple[str, Task]]:
    """(suite name, task) pairs in run order. `limit` caps the number of tasks per suite."""
    sources: list[tuple[str, list[Task]]] = []
    if tasks_file:
        sources.append((Path(tasks_file).stem, read_tasks(tasks_file)))
    for name in suites or ([] if tasks_file else DEFAULT_SUITES):
        sources.append((name, load_suite(name)))
    pairs = []
    for name, tasks in sources:
        pairs += [(name, t) for t in (tasks[:limit] if limit else tasks)]
    return pairs


def default_out_dir() -> Path:
    return Path("runs") / datetime.now().strftime("bench-%Y%m%d-%H%M%S")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def write_json(path: Path, obj: dict) -> None:
    """Write atomically, so a reader (or an interrupted run) never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def print_summary(console: Console, results: dict) -> None:
    s = results["summary"]
    table = Table(title=f"nanocodegen bench — {results['status']}", show_header=True)
    table.add_column("suite")
    table.add_column("tasks", justify="right")
    table.add_column("solved", justify="right")
    table.add_column("pass@1", justify="right")
    table.add_column("mean attempts", justify="right")
    for name, r in s["by_suite"].items():
        mean = r["mean_attempts_to_correct"]
        table.add_row(name, str(r["tasks"]), f"{r['solved']} ({r['solve_rate']:.1%})", f"{r['pass_at_1']:.1%}",
                      f"{mean:.2f}" if mean else "-")
    console.print(table)
    fmt = lambda v, unit="": "-" if v is None else f"{v:.1f}{unit}"
    t = s["time_ms"]
    total = sum(t.values()) or 1.0
    console.print(
        f"attempt latency p50 {fmt(s['attempt_latency_ms_p50'], ' ms')}, "
        f"p90 {fmt(s['attempt_latency_ms_p90'], ' ms')}; "
        f"{fmt(s['tokens_per_s'])} generated tok/s; time in prefill {t['prefill'] / total:.0%}, "
        f"decode {t['decode'] / total:.0%}, verify {t['verify'] / total:.0%}; "
        f"wall {s.get('wall_s', 0):.1f} s; peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB"
    )


def run_bench(
    tasks: list[tuple[str, Task]],
    agent_config: AgentConfig,
    checkpoint: str | None = None,
    out: str | None = None,
    device: str = "auto",
    console: Console | None = None,
    allow_weak_isolation: bool = False,
) -> dict:
    """Run every task through the agent; returns the results dict also written to OUT/results.json.

    The sandbox refuses to start where a layer is missing unless `allow_weak_isolation`; either way,
    the layers in force go into the provenance."""
    from nanocodegen.verifier import CodeVerifier

    console = console or Console(stderr=True)
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
    dev = pick_device(device)
    model, tok, ckpt_config = load_checkpoint(ckpt, dev)
    torch.manual_seed(agent_config.seed)
    out_dir = Path(out) if out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "status": "running",
        "config": {**asdict(agent_config), "checkpoint": str(ckpt), "device": str(dev), "out": str(out_dir),
                   "tasks": len(tasks)},
        "provenance": {**provenance(dev), "seed": agent_config.seed, "checkpoint_sha256": checkpoint_sha256(ckpt),
                       "checkpoint_config": ckpt_config},
        "episodes": [],
        "summary": {},
    }
    feedback_budget = ckpt_config.get("prompt", {}).get("feedback_budget", 32)
    episodes_path = (out_dir / EPISODES_FILE).open("w")
    t0 = time.perf_counter()
    last_write = 0.0

    def finish(status: str) -> None:
        results["status"] = status
        wall = time.perf_counter() - t0
        results["summary"] = summarize(results["episodes"], agent_config.max_attempts, wall)
        results["summary"]["peak_rss_bytes"] = peak_rss_bytes()
        write_json(out_dir / RESULTS_FILE, results)

    with CodeVerifier(workers=1, allow_weak_isolation=allow_weak_isolation) as verifier, progress_bar(console) as bar:
        verifier.sandbox.require_isolation()  # now, not at the first attempt
        results["provenance"]["sandbox"] = verifier.isolation
        agent = Agent(model, tok, verifier, agent_config, feedback_budget)
        job = bar.add_task("bench", total=len(tasks), info="")
        solved = 0
        try:
            for suite, task in tasks:
                record = asdict(agent.run(task))
                record["suite"] = suite
                results["episodes"].append(record)
                episodes_path.write(json.dumps(record) + "\n")
                episodes_path.flush()
                solved += record["solved"]
                bar.update(job, advance=1, info=f"solved {solved}/{len(results['episodes'])}")
                if time.perf_counter() - last_write > 2.0:
                    finish("running")
                    last_write = time.perf_counter()
        except KeyboardInterrupt:
            finish("interrupted")
            episodes_path.close()
            raise
    episodes_path.close()
    finish("complete")
    return results
