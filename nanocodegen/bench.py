"""The benchmark: run the agent over task suites and write results.

    nanocodegen bench                                  # seed + synthetic test split, shipped model
    nanocodegen bench --suite seed --max-attempts 3 --out runs/seed
    nanocodegen bench --tasks my_tasks.jsonl --checkpoint runs/train
    nanocodegen bench --out runs/b --resume             # continue an interrupted run
    nanocodegen bench --batch 16                       # 16 episodes at once (batch.py)

Writes OUT/episodes.jsonl (one line per finished task, as it finishes), OUT/results.json (MLPerf EDU's
report shape: schema, id, workload, profile, status, backend, data_mode, seed, metrics, quality; then
config, provenance, every episode in task order and the summary; rewritten as the run goes and at the
end) and OUT/attempts.png (per-attempt latency and prefill tokens against context length; plots.py).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nanocodegen import kernels
from nanocodegen.agent import Agent
from nanocodegen.batch import BatchedAgents, cache_rows
from nanocodegen.checkpoint import checkpoint_sha256, default_checkpoint, load_checkpoint
from nanocodegen.config import AgentConfig
from nanocodegen.generate import compile_decode, warm_up_decode
from nanocodegen.metrics import HEADLINES, QUALITY_SUITE, bench_metrics, quality, summarize
from nanocodegen.provenance import provenance, report_header
from nanocodegen.tasks import Task, load_suite, read_tasks
from nanocodegen.train import progress_bar

DEFAULT_SUITES = ("seed", "synthetic")
RESULTS_FILE, EPISODES_FILE, PLOT_FILE = "results.json", "episodes.jsonl", "attempts.png"
DEFAULT_BATCH = 1  # episodes at once; 1 is the sequential agent loop
# Intra-op threads for the model. The default model's ops take microseconds: a second thread only adds
# synchronisation (and, on a busy machine, waits for a core), and leaves no core for the sandbox.
DEFAULT_THREADS = 1
# `bench --precision`: the dtype of the cached steps' matrix products and KV cache (NanoCodeGenAgent.set_decode_dtype)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prepare_engine(model, precision: str, compile: bool, cache_rows: int) -> dict | None:
    """Set the model's decode precision and, with `compile`, compile its cached steps and run each graph once
    for a cache of `cache_rows` rows (1: the sequential agent), so that compiling, or loading inductor's
    cached graphs, happens before a timed run. Returns the compile record for results.json, or None."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model.set_decode_dtype(PRECISIONS[precision])
    if not compile:
        return None
    compile_decode(model)
    return {"chunk": model.compiled_decode.chunk, "warm_up_s": warm_up_decode(model, cache_rows)}


@contextmanager
def collector_frozen() -> Iterator[None]:
    """The objects that exist now (torch's, the model's, dynamo's: hundreds of thousands) live for the whole
    run; frozen, Python's collector no longer walks them each time the run's own allocations trigger a
    collection (~10-15 % of a batched run's main thread went to it)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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


def read_finished_episodes(out_dir: Path) -> list[dict]:
    """The episodes an earlier run of OUT finished, from its episodes.jsonl. A last line cut short by the
    interruption is dropped (and the file rewritten without it)."""
    path = out_dir / EPISODES_FILE
    if not path.is_file():
        return []
    episodes, lines = [], path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        try:
            episodes.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{i + 1} is not valid JSON; it is not a file bench wrote — "
                                 "start a fresh run with another --out") from None
            path.write_text("".join(lines[:i]))  # the interrupted write
    return episodes


def check_resumable(out_dir: Path, finished: list[dict], tasks: list[tuple[str, Task]], config: dict,
                    checkpoint_sha: str) -> None:
    """Refuse to resume a run made with other settings or other tasks: the results would mix two runs."""
    fix = "rerun with the flags of the interrupted run, or drop --resume to start a fresh run in a new --out"
    previous = out_dir / RESULTS_FILE
    if previous.is_file():
        before = json.loads(previous.read_text())
        if before.get("status") == "complete":
            raise ValueError(f"--resume: {out_dir} holds a complete run; there is nothing to resume")
        for key, value in config.items():
            if key != "out" and before["config"].get(key) != value:
                raise ValueError(f"--resume: {out_dir} was run with {key}={before['config'].get(key)!r}, "
                                 f"this run has {value!r}; {fix}")
        if before["provenance"].get("checkpoint_sha256") != checkpoint_sha:
            raise ValueError(f"--resume: {out_dir} was run with another checkpoint; {fix}")
    wanted = {(suite, t.id) for suite, t in tasks}
    for e in finished:
        if (e.get("suite"), e["id"]) not in wanted:
            raise ValueError(f"--resume: {out_dir} holds task {e['id']!r} ({e.get('suite')}), which this run "
                             f"does not have; {fix}")


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
        f"{fmt(s['tokens_per_s'])} generated tok/s per attempt, {fmt(s.get('generated_tokens_per_wall_s'))} "
        f"over the run; time in prefill {t['prefill'] / total:.0%}, "
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
    resume: bool = False,
    profile: str = "max",
    allow_weak_isolation: bool = False,
    batch: int = DEFAULT_BATCH,
    threads: int = DEFAULT_THREADS,
    compile: bool = False,
    precision: str = "fp32",
) -> dict:
    """Run every task through the agent (`batch` episodes at once); returns the results dict also
    written to OUT/results.json.

    With `resume`, OUT must be an interrupted run of the same tasks and settings: its finished episodes
    are kept and only the rest are run. The sandbox refuses to start where a layer is missing unless
    `allow_weak_isolation`; either way, the layers in force go into the provenance."""
    from nanocodegen.plots import plot_attempts  # matplotlib: loaded only when a run needs it
    from nanocodegen.verifier import CodeVerifier

    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if precision not in PRECISIONS:  # before the model loads
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    console = console or Console(stderr=True)
    torch.set_num_threads(threads)
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
    dev = pick_device(device)
    model, tok, ckpt_config = load_checkpoint(ckpt, dev)
    torch.manual_seed(agent_config.seed)
    out_dir = Path(out) if out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Verification overlaps generation only in batched runs; one sandbox worker per core at most.
    verify_workers = 1 if batch == 1 else max(1, min(batch, os.cpu_count() or 1))
    config = {**asdict(agent_config), "checkpoint": str(ckpt), "device": str(dev), "out": str(out_dir),
              "tasks": len(tasks), "batch": batch, "threads": threads, "verify_workers": verify_workers,
              "compile": compile, "precision": precision}
    ckpt_sha = checkpoint_sha256(ckpt)
    order = {(suite, t.id): i for i, (suite, t) in enumerate(tasks)}
    records: dict[int, dict] = {}  # task index -> episode record, kept from a resumed run or finished now
    previous_wall = 0.0
    if resume:
        kept = read_finished_episodes(out_dir)
        check_resumable(out_dir, kept, tasks, config, ckpt_sha)
        records = {order[(e.get("suite"), e["id"])]: e for e in kept}
        if (out_dir / RESULTS_FILE).is_file():
            previous_wall = json.loads((out_dir / RESULTS_FILE).read_text())["summary"].get("wall_s", 0.0)
    todo = [i for i in range(len(tasks)) if i not in records]
    results = {
        **report_header(out_dir.name, profile, dev, agent_config.seed, sorted({s for s, _ in tasks})),
        "status": "running",
        "metrics": {},
        "quality": {},
        "config": config,
        "provenance": {**provenance(dev), "seed": agent_config.seed, "checkpoint_sha256": ckpt_sha,
                       "checkpoint_config": ckpt_config,
                       "cpu_kernels": kernels.status() if dev.type == "cpu" else f"unused on {dev.type}"},
        "episodes": [],
        "summary": {},
    }
    if resume:
        results["resumed"] = {"episodes_kept": len(records), "previous_wall_s": previous_wall}
    compiled = prepare_engine(model, precision, compile, 1 if batch == 1 else cache_rows(batch, len(todo)))
    if compiled:
        results["compile"] = compiled
    elif batch > 1 and agent_config.kv_cache != "none":
        # Set-up, not run time: the batched cache is ~200 MB at --batch 256, and first touching its pages
        # took ~0.1 s inside the timed run (BatchedAgents.run keeps a cache of its size, as warm-up does).
        with torch.inference_mode():
            model.setup_kv_cache(cache_rows(batch, len(todo)))
    split_tasks = len(load_suite(QUALITY_SUITE))
    feedback_budget = ckpt_config.get("prompt", {}).get("feedback_budget", 32)
    episodes_path = (out_dir / EPISODES_FILE).open("a" if resume else "w")
    # The run's wall clock counts the episodes: from when the sandbox is ready to when the last episode
    # ends. Starting and closing the sandbox's server (~30 and ~20-50 ms here) are set-up, like loading
    # the model and compile warm-up, and recorded apart (`sandbox_start_s`).
    t0 = t_end = None
    last_write = 0.0

    def finish(status: str) -> None:
        results["status"] = status
        results["episodes"] = [records[i] for i in sorted(records)]  # task order, whichever run finished them
        wall = previous_wall + ((t_end or time.perf_counter()) - t0 if t0 is not None else 0.0)
        results["summary"] = summarize(results["episodes"], agent_config.max_attempts, wall)
        results["summary"]["peak_rss_bytes"] = peak_rss_bytes()
        name, unit, better = HEADLINES["bench"]
        results["metrics"] = bench_metrics(results["summary"])
        results["metrics"]["headline"] = {"name": name, "value": results["metrics"][name], "unit": unit,
                                          "better": better}
        results["quality"] = quality(results["episodes"], split_tasks)
        write_json(out_dir / RESULTS_FILE, results)

    t_sandbox = time.perf_counter()
    with (CodeVerifier(workers=verify_workers, allow_weak_isolation=allow_weak_isolation) as verifier,
          progress_bar(console) as bar):
        verifier.sandbox.require_isolation()  # now, not at the first attempt
        results["provenance"]["sandbox"] = verifier.isolation
        t0 = last_write = time.perf_counter()
        results["sandbox_start_s"] = t0 - t_sandbox
        job = bar.add_task("bench", total=len(tasks), completed=len(records), info="")
        solved = sum(e["solved"] for e in records.values())

        def record_episode(index: int, episode) -> None:
            nonlocal solved, last_write
            record = episode.as_dict()
            record["suite"] = tasks[index][0]
            records[index] = record
            episodes_path.write(json.dumps(record) + "\n")
            episodes_path.flush()
            solved += record["solved"]
            bar.update(job, advance=1, info=f"solved {solved}/{len(records)}")
            if time.perf_counter() - last_write > 2.0:
                finish("running")
                last_write = time.perf_counter()

        try:
            with collector_frozen():
                if batch == 1:
                    agent = Agent(model, tok, verifier, agent_config, feedback_budget)
                    for index in todo:
                        record_episode(index, agent.run(tasks[index][1]))
                else:
                    runner = BatchedAgents(model, tok, verifier, agent_config, batch, feedback_budget,
                                           verify_threads=verify_workers)
                    runner.run([tasks[i][1] for i in todo], lambda j, episode: record_episode(todo[j], episode))
                    results["batch_stats"] = runner.stats.as_dict()
            t_end = time.perf_counter()
        except KeyboardInterrupt:
            finish("interrupted")
            episodes_path.close()
            raise
    episodes_path.close()
    finish("complete")
    plot_attempts(results["episodes"], agent_config.kv_cache, out_dir / PLOT_FILE)
    return results
