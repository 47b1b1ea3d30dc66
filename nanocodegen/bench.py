"""The benchmark: run the agent over task suites and write results.

    nanocodegen bench                                  # seed + synthetic test split, shipped model
    nanocodegen bench --suite seed --max-attempts 3 --out runs/seed
    nanocodegen bench --tasks my_tasks.jsonl --checkpoint runs/train
    nanocodegen bench --batch 16                       # 16 episodes at once (batch.py)

Writes OUT/episodes.jsonl (one line per finished task, as it finishes), OUT/results.json (config,
provenance, every episode in task order and the summary; rewritten as the run goes and at the end) and
OUT/attempts.png (per-attempt latency and prefill tokens against context length; plots.py).
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
from nanocodegen.batch import BatchedAgents
from nanocodegen.checkpoint import checkpoint_sha256, default_checkpoint, load_checkpoint
from nanocodegen.config import AgentConfig
from nanocodegen.generate import compile_decode
from nanocodegen.metrics import summarize
from nanocodegen.provenance import provenance
from nanocodegen.tasks import Task, load_suite, read_tasks
from nanocodegen.train import progress_bar

DEFAULT_SUITES = ("seed", "synthetic")
RESULTS_FILE, EPISODES_FILE, PLOT_FILE = "results.json", "episodes.jsonl", "attempts.png"
DEFAULT_BATCH = 1  # episodes at once; 1 is the sequential agent loop
# Intra-op threads for the model. The default model's ops take microseconds: a second thread only adds
# synchronisation (and, on a busy machine, waits for a core), and leaves no core for the sandbox.
DEFAULT_THREADS = 1


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
    batch: int = DEFAULT_BATCH,
    threads: int = DEFAULT_THREADS,
    compile: bool = False,
) -> dict:
    """Run every task through the agent (`batch` episodes at once); returns the results dict also
    written to OUT/results.json."""
    from nanocodegen.plots import plot_attempts  # matplotlib: loaded only when a run needs it
    from nanocodegen.verifier import CodeVerifier

    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    console = console or Console(stderr=True)
    torch.set_num_threads(threads)
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
    dev = pick_device(device)
    model, tok, ckpt_config = load_checkpoint(ckpt, dev)
    if compile:
        compile_decode(model)
    torch.manual_seed(agent_config.seed)
    out_dir = Path(out) if out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Verification overlaps generation only in batched runs; one sandbox worker per core at most.
    verify_workers = 1 if batch == 1 else max(1, min(batch, os.cpu_count() or 1))
    results = {
        "status": "running",
        "config": {**asdict(agent_config), "checkpoint": str(ckpt), "device": str(dev), "out": str(out_dir),
                   "tasks": len(tasks), "batch": batch, "threads": threads, "verify_workers": verify_workers,
                   "compile": compile},
        "provenance": {**provenance(dev), "seed": agent_config.seed, "checkpoint_sha256": checkpoint_sha256(ckpt),
                       "checkpoint_config": ckpt_config},
        "episodes": [],
        "summary": {},
    }
    feedback_budget = ckpt_config.get("prompt", {}).get("feedback_budget", 32)
    episodes_path = (out_dir / EPISODES_FILE).open("w")
    t0 = time.perf_counter()
    last_write = 0.0
    finished: dict[int, dict] = {}  # task index -> episode record, in the order episodes finish

    def finish(status: str) -> None:
        results["status"] = status
        results["episodes"] = [finished[i] for i in sorted(finished)]
        wall = time.perf_counter() - t0
        results["summary"] = summarize(results["episodes"], agent_config.max_attempts, wall)
        results["summary"]["peak_rss_bytes"] = peak_rss_bytes()
        write_json(out_dir / RESULTS_FILE, results)

    with CodeVerifier(workers=verify_workers) as verifier, progress_bar(console) as bar:
        job = bar.add_task("bench", total=len(tasks), info="")
        solved = 0

        def record_episode(index: int, episode) -> None:
            nonlocal solved, last_write
            record = asdict(episode)
            record["suite"] = tasks[index][0]
            finished[index] = record
            episodes_path.write(json.dumps(record) + "\n")
            episodes_path.flush()
            solved += record["solved"]
            bar.update(job, advance=1, info=f"solved {solved}/{len(finished)}")
            if time.perf_counter() - last_write > 2.0:
                finish("running")
                last_write = time.perf_counter()

        try:
            if batch == 1:
                agent = Agent(model, tok, verifier, agent_config, feedback_budget)
                for index, (_, task) in enumerate(tasks):
                    record_episode(index, agent.run(task))
            else:
                runner = BatchedAgents(model, tok, verifier, agent_config, batch, feedback_budget,
                                       verify_threads=verify_workers)
                runner.run([task for _, task in tasks], record_episode)
                results["batch_stats"] = runner.stats.as_dict()
        except KeyboardInterrupt:
            finish("interrupted")
            episodes_path.close()
            raise
    episodes_path.close()
    finish("complete")
    plot_attempts(results["episodes"], agent_config.kv_cache, out_dir / PLOT_FILE)
    return results
