"""MLPerf LoadGen harness: the agent as LoadGen's system under test, one task episode per sample.

    nanocodegen loadgen --scenario SingleStream --quick
    nanocodegen loadgen --scenario Offline --mode accuracy
    nanocodegen loadgen --scenario Server --user-conf user.conf

A sample is one task episode, all its attempts. LoadGen (the official `mlperf_loadgen` package) decides
which samples to issue and when, from `TestSettings`; `AgentSUT` answers them. Each sample reports its
first token (attempt 1's first token, through `FirstTokenComplete`) and its completion with
`n_tokens` = tokens generated in the whole episode, so LoadGen's token latencies (TTFT, TPOT) are
per episode: TPOT includes the verifier and the retries, which is the cost this workload measures.

The run folder holds LoadGen's own logs (mlperf_log_summary.txt, mlperf_log_detail.txt,
mlperf_log_accuracy.json), episodes.jsonl (the per-attempt records of every sample LoadGen issued,
keyed by `sample_index`, the QSL index), accuracy.json in accuracy mode, and results.json.

Settings are layered, later wins: LoadGen's mlperf.conf; this workload's defaults (`workload_settings`,
sized from a short warm-up); `QUICK_SETTINGS` with --quick; a user.conf (keys `nanocodegen.SCENARIO.KEY`,
e.g. `nanocodegen.Offline.min_duration = 60000`); the explicit flags.
"""

from __future__ import annotations

import array
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import mlperf_loadgen as lg
import torch

from nanocodegen.batch import BatchedAgents, cache_rows
from nanocodegen.config import AgentConfig, LoadGenConfig
from nanocodegen.metrics import HEADLINES, QUALITY_SUITE, quality, rates, summarize, time_shares
from nanocodegen.provenance import provenance, report_header
from nanocodegen.records import EpisodeRecord, Outcome
from nanocodegen.tasks import Task

MODEL_NAME = "nanocodegen"  # the model name in user.conf keys
RESULTS_FILE, EPISODES_FILE, ACCURACY_FILE = "results.json", "episodes.jsonl", "accuracy.json"
SUMMARY_LOG, DETAIL_LOG, ACCURACY_LOG = "mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json"

# Server latency bounds per episode, those of MLPerf Inference's Llama 2 70B Server scenario: first token
# within 2 s, then 200 ms per generated token (here that time includes verification and retries).
SERVER_TTFT_NS = 2_000_000_000
SERVER_TPOT_NS = 200_000_000

# --quick: 20-30 s on a busy 2-core machine. SingleStream needs 64 queries, the fewest LoadGen's early stopping
# accepts for a 90th-percentile estimate; its expected latency of 1 ms only makes LoadGen prepare more
# queries than it will issue (it stops once min_query_count and min_duration are both met). Offline's one
# query has max(min_query_count, 1.1 x min_duration x expected QPS) samples and is VALID only if they take
# min_duration: 128 samples take 3 s down to 23 ms per episode, and the expected-QPS term covers faster
# machines. Server runs briefly and is not expected to be VALID (early stopping wants hundreds of queries).
# max_duration caps a run on a slow machine (it is then INVALID, not endless).
QUICK_SETTINGS: dict[str, dict] = {
    "SingleStream": dict(min_query_count=64, min_duration_ms=5_000, single_stream_expected_latency_ns=1_000_000,
                         max_duration_ms=100_000),
    "Offline": dict(min_query_count=128, min_duration_ms=3_000),
    "Server": dict(min_query_count=16, min_duration_ms=10_000, max_duration_ms=100_000),
}

# Without a warm-up to measure it, assume one episode per second.
FALLBACK_EPISODES_PER_S = 1.0

RunEpisode = Callable[[Task, Callable[[int], None] | None], EpisodeRecord]
# run_batch(tasks, on_episode(index, record), on_first_token(index, token_id), should_stop()): the batched
# agents' `run`; once should_stop() is true it starts no new episode.
RunBatch = Callable[
    [list[Task], Callable[[int, EpisodeRecord], None], Callable[[int, int], None], Callable[[], bool]], object
]


class HarnessError(RuntimeError):
    """The LoadGen run could not be set up or scored; the message says why and what to do."""


@dataclass
class Warmup:
    episodes: int
    episodes_per_s: float | None  # measured after the first episode, which pays one-off costs
    mean_latency_ms: float | None


def workload_settings(scenario: str, warmup: Warmup) -> dict:
    """This workload's defaults for a scenario, sized from the measured episode rate.

    SingleStream: the expected latency only decides how many queries LoadGen prepares, so it is set well
    below the measured mean (too high and the test runs out of queries before its minimum duration; episode
    times vary tenfold with the task and the machine's load). Offline: the one query must keep the system
    busy past min_duration, so the expected rate is set above the measured one (too high only lengthens
    the run). Server: queries arrive at half the measured rate, so the queue stays short."""
    rate = warmup.episodes_per_s or FALLBACK_EPISODES_PER_S
    if scenario == "SingleStream":
        return dict(single_stream_expected_latency_ns=int(0.1e9 / rate))
    if scenario == "Offline":
        return dict(offline_expected_qps=2.0 * rate)
    return dict(server_target_qps=0.5 * rate, ttft_latency=SERVER_TTFT_NS, tpot_latency=SERVER_TPOT_NS)


def build_settings(cfg: LoadGenConfig, warmup: Warmup) -> lg.TestSettings:
    """TestSettings from the layers described in the module docstring."""
    settings = lg.TestSettings()
    settings.FromConfig("", MODEL_NAME, cfg.scenario, 0)  # conf_type 0: the mlperf.conf built into LoadGen
    settings.scenario = getattr(lg.TestScenario, cfg.scenario)
    layers = [workload_settings(cfg.scenario, warmup)]
    if cfg.quick:
        layers.append(QUICK_SETTINGS[cfg.scenario])
    for layer in layers:
        for key, value in layer.items():
            setattr(settings, key, value)
    if cfg.user_conf:
        if not Path(cfg.user_conf).is_file():
            raise HarnessError(f"--user-conf {cfg.user_conf}: no such file; pass the path of a LoadGen user.conf")
        # conf_type 2: read this file alone (1 would re-read mlperf.conf over the layers above).
        if settings.FromConfig(str(cfg.user_conf), MODEL_NAME, cfg.scenario, 2) != 0:
            raise HarnessError(f"--user-conf {cfg.user_conf}: LoadGen could not parse it; each line must be "
                               f"`{MODEL_NAME}.{cfg.scenario}.key = number` (or * for model or scenario)")
    if cfg.target_qps is not None:
        if cfg.target_qps <= 0:
            raise HarnessError("--target-qps must be positive")
        if cfg.scenario == "Server":
            settings.server_target_qps = cfg.target_qps
        elif cfg.scenario == "Offline":
            settings.offline_expected_qps = cfg.target_qps
        else:
            settings.single_stream_expected_latency_ns = int(1e9 / cfg.target_qps)
    if cfg.min_duration_ms is not None:
        settings.min_duration_ms = cfg.min_duration_ms
    if cfg.min_query_count is not None:
        settings.min_query_count = cfg.min_query_count
    settings.mode = lg.TestMode.AccuracyOnly if cfg.mode == "accuracy" else lg.TestMode.PerformanceOnly
    settings.use_token_latencies = True
    return settings


def _response(query_id: int, payload: bytes, n_tokens: int | None = None) -> tuple[lg.QuerySampleResponse, array.array]:
    """A response pointing at `payload`; the buffer is returned too and must live until LoadGen has copied it
    (inside the *Complete call)."""
    buf = array.array("B", payload)
    address, length = buf.buffer_info()
    if n_tokens is None:
        return lg.QuerySampleResponse(query_id, address, length), buf
    return lg.QuerySampleResponse(query_id, address, length, n_tokens), buf


def response_payload(task: Task, record: EpisodeRecord) -> bytes:
    """What LoadGen logs for a sample in accuracy mode: the task id, the number of attempts that ran, and
    the last program written. The accuracy scorer re-verifies that program; it does not trust `solved`."""
    ran = [a for a in record.attempts if a.outcome != Outcome.CONTEXT_OVERFLOW]
    code = ran[-1].code if ran else ""
    return json.dumps({"id": task.id, "attempts": len(ran), "code": code, "solved": record.solved}).encode()


class AgentSUT:
    """LoadGen's system under test: its two callbacks over an episode runner.

    LoadGen calls `issue_queries` from its own threads and expects it to return at once; one worker thread
    runs the queries in arrival order. A query of one sample (SingleStream, Server) is one episode with
    `run_episode` (the model uses every core for one episode at a time). A larger query (Offline's one) goes
    to `run_batch`, the batched agents, when given: its episodes run concurrently and each sample completes
    as its episode ends; without `run_batch` it is run episode by episode."""

    def __init__(self, tasks: list[tuple[str, Task]], run_episode: RunEpisode, episodes_path: Path,
                 run_batch: RunBatch | None = None):
        self.tasks, self.run_episode, self.run_batch = tasks, run_episode, run_batch
        self.records: list[dict] = []
        self.errors: list[str] = []
        self._first_reported: set[int] = set()  # query ids whose first token LoadGen has
        self.stopping = threading.Event()  # set on Ctrl-C: samples not yet started complete unrun
        self.unrun = 0
        self._queue: queue.Queue = queue.Queue()
        self._out = episodes_path.open("w")
        self._worker = threading.Thread(target=self._work, name="nanocodegen-sut", daemon=True)
        self._worker.start()

    def issue_queries(self, samples: list[lg.QuerySample]) -> None:
        self._queue.put(list(samples))

    def flush_queries(self) -> None:
        pass  # nothing is held back: every query is queued as it arrives

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()
        self._out.close()

    def _work(self) -> None:
        while (samples := self._queue.get()) is not None:
            if self.run_batch is not None and len(samples) > 1:
                self._run_batch(samples)
            else:
                for sample in samples:
                    self._run_sample(sample)

    def _first_token(self, sample: lg.QuerySample, token_id: int | None) -> None:
        if sample.id in self._first_reported:
            return
        self._first_reported.add(sample.id)
        payload = b"" if token_id is None else array.array("i", [token_id]).tobytes()
        response, _buf = _response(sample.id, payload)
        lg.FirstTokenComplete([response])

    def _complete(self, sample: lg.QuerySample, record: EpisodeRecord) -> None:
        suite, task = self.tasks[sample.index]
        # An episode whose first attempt generated nothing (its prompt overflowed the context) reports its
        # first token at completion, so that LoadGen, which needs one, gets the whole latency as TTFT.
        self._first_token(sample, None)
        response, _buf = _response(sample.id, response_payload(task, record), record.total_new_tokens)
        lg.QuerySamplesComplete([response])
        self._first_reported.discard(sample.id)
        line = {"sample_index": sample.index, "query_id": sample.id, **record.as_dict(), "suite": suite}
        self.records.append(line)
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()

    def _failed(self, sample: lg.QuerySample, e: Exception) -> None:
        """LoadGen waits for every sample: complete a failed one, and fail the run afterwards."""
        task = self.tasks[sample.index][1]
        self.errors.append(f"sample {sample.index} ({task.id}): {type(e).__name__}: {e}")
        self._complete(sample, EpisodeRecord(id=task.id, prompt=task.prompt, expected=task.expected, solved=False))

    def _skip(self, sample: lg.QuerySample) -> None:
        """Complete a sample without running it (the run is stopping); it is not recorded."""
        self._first_token(sample, None)
        response, _buf = _response(sample.id, b"", 1)  # LoadGen aborts on a sample of no tokens
        lg.QuerySamplesComplete([response])
        self._first_reported.discard(sample.id)
        self.unrun += 1

    def _run_sample(self, sample: lg.QuerySample) -> None:
        if self.stopping.is_set():
            self._skip(sample)
            return
        task = self.tasks[sample.index][1]
        try:
            record = self.run_episode(task, lambda token_id: self._first_token(sample, token_id))
        except Exception as e:
            self._failed(sample, e)
            return
        self._complete(sample, record)

    def _run_batch(self, samples: list[lg.QuerySample]) -> None:
        done: set[int] = set()

        def finished(i: int, record: EpisodeRecord) -> None:
            done.add(i)
            self._complete(samples[i], record)

        try:
            self.run_batch([self.tasks[s.index][1] for s in samples], finished,
                           lambda i, token_id: self._first_token(samples[i], token_id), self.stopping.is_set)
        except Exception as e:
            for i, sample in enumerate(samples):
                if i not in done:
                    self._failed(sample, e)
            return
        for i, sample in enumerate(samples):  # not started: the run was stopped
            if i not in done:
                self._skip(sample)


def warm_up(tasks: list[tuple[str, Task]], run_episode: RunEpisode, episodes: int,
            run_batch: RunBatch | None = None) -> Warmup:
    """Run `episodes` tasks spread over the task list before the test; measure the episode rate.

    The episodes run in a thread of their own, as the SUT's do: torch's intra-op threading behaves differently
    in the main thread (on a busy 2-core machine its episodes were ten times slower), and a warm-up measured
    there would size the test for another system. With `run_batch` the episodes run as one batch, twice:
    the first pays the one-off costs, the second is timed (the rate is then the batch's throughput)."""
    if episodes <= 0 or not tasks:
        return Warmup(0, None, None)
    picks = [tasks[i * len(tasks) // episodes][1] for i in range(episodes)]
    latencies: list[float] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            if run_batch is not None:
                for _ in range(2):
                    t0 = time.perf_counter()
                    run_batch(picks, lambda i, record: None, lambda i, token_id: None, lambda: False)
                    latencies[:] = [(time.perf_counter() - t0) / len(picks)]
                return
            for task in picks:
                t0 = time.perf_counter()
                run_episode(task, None)
                latencies.append(time.perf_counter() - t0)
        except Exception as e:  # re-raised in the caller's thread
            errors.append(e)

    worker = threading.Thread(target=run, name="nanocodegen-warmup")
    worker.start()
    worker.join()
    if errors:
        raise HarnessError(f"the warm-up episode failed: {type(errors[0]).__name__}: {errors[0]}") from errors[0]
    timed = latencies[1:] or latencies  # the first episode pays one-off costs (allocations, caches)
    mean = sum(timed) / len(timed)
    return Warmup(episodes, 1.0 / mean if mean > 0 else None, mean * 1e3)


def read_detail_log(path: Path) -> dict:
    """LoadGen's detail log as {"values": {key: value}, "errors": [...], "warnings": [...]} (last value wins)."""
    values, errors, warnings = {}, [], []
    for line in path.read_text().splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        entry = json.loads(line[len(":::MLLOG "):])
        values[entry["key"]] = entry["value"]
        meta = entry.get("metadata", {})
        if meta.get("is_error"):
            errors.append(f"{entry['key']}: {entry['value']}")
        if meta.get("is_warning"):
            warnings.append(f"{entry['key']}: {entry['value']}")
    return {"values": values, "errors": errors, "warnings": warnings}


def loadgen_metrics(scenario: str, values: dict) -> dict:
    """The LoadGen results this workload reports, in ms and per second, from the detail log's values."""

    def ms(key: str) -> float | None:
        return values[key] / 1e6 if isinstance(values.get(key), int | float) else None

    metrics = {
        "result_validity": values.get("result_validity"),
        "query_count": values.get("result_query_count"),
        "latency_ms_p50": ms("result_50.00_percentile_latency_ns"),
        "latency_ms_p90": ms("result_90.00_percentile_latency_ns"),
        "latency_ms_p99": ms("result_99.00_percentile_latency_ns"),
        "latency_ms_mean": ms("result_mean_latency_ns"),
        "ttft_ms_p50": ms("result_first_token_50.00_percentile_latency_ns"),
        "ttft_ms_p90": ms("result_first_token_90.00_percentile_latency_ns"),
        "tpot_ms_p50": ms("result_time_per_output_token_50.00_percentile_ns"),
        "tpot_ms_p90": ms("result_time_per_output_token_90.00_percentile_ns"),
    }
    if scenario == "SingleStream":
        metrics["samples_per_s"] = values.get("result_qps_with_loadgen_overhead")
        metrics["tokens_per_s"] = values.get("result_completed_tokens_per_second")
    elif scenario == "Offline":
        metrics["samples_per_s"] = values.get("result_samples_per_second")
        metrics["tokens_per_s"] = values.get("result_tokens_per_second")
    else:
        metrics["scheduled_samples_per_s"] = values.get("result_scheduled_samples_per_sec")
        metrics["completed_samples_per_s"] = values.get("result_completed_samples_per_sec")
        metrics["tokens_per_s"] = values.get("result_completed_tokens_per_second")
    return metrics


def score_accuracy_log(path: Path, tasks: list[tuple[str, Task]], verifier, max_attempts: int,
                       split_tasks: int, timeout_ms: int = 100) -> dict:
    """Score mlperf_log_accuracy.json: re-verify each sample's last program against its task.

    Returns solve rate, pass@1, mean attempts-to-correct (over solved tasks), the quality block and how
    often the re-verification disagreed with the agent's own verdict (a flaky program, or a bug)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"{path}: cannot read LoadGen's accuracy log ({e}); rerun with --mode accuracy") from None
    scored: dict[int, dict] = {}
    disagreements = 0
    for entry in entries:
        index = entry["qsl_idx"]
        if index in scored:
            continue  # a sample logged twice (performance mode's sampled log) is scored once
        if not 0 <= index < len(tasks):
            raise HarnessError(f"{path}: sample {index} is outside this task list of {len(tasks)}; score the log "
                               "with the tasks (--suite/--tasks/--limit) of the run that wrote it")
        suite, task = tasks[index]
        payload = json.loads(bytes.fromhex(entry["data"]).decode())
        if payload["id"] != task.id:
            raise HarnessError(f"{path}: sample {index} answered task {payload['id']!r} but this task list has "
                               f"{task.id!r} there; score the log with the tasks of the run that wrote it")
        verdict = verifier.verify(payload["code"], task.expected, timeout_ms=timeout_ms)
        solved = verdict.outcome is Outcome.CORRECT
        disagreements += solved != payload["solved"]
        scored[index] = {"id": task.id, "suite": suite, "solved": solved,
                         "attempts_to_correct": payload["attempts"] if solved else None}
    episodes = [scored[i] for i in sorted(scored)]
    by_suite: dict[str, list[dict]] = {}
    for e in episodes:
        by_suite.setdefault(e["suite"], []).append(e)
    return {
        **rates(episodes, max_attempts),
        "samples_logged": len(entries),
        "disagreements": disagreements,
        "by_suite": {k: rates(v, max_attempts) for k, v in sorted(by_suite.items())},
        "quality": quality(episodes, split_tasks),
    }


@dataclass
class LoadGenRun:
    """What one LoadGen test left: the settings LoadGen used, its results, the per-sample records."""

    log: dict  # read_detail_log of mlperf_log_detail.txt
    metrics: dict  # loadgen_metrics
    records: list[dict]  # one per sample LoadGen issued and the SUT ran, in completion order
    warmup: Warmup
    wall_s: float
    interrupted: bool = False  # Ctrl-C: the samples not yet started were completed unrun


def run_loadgen(
    tasks: list[tuple[str, Task]], cfg: LoadGenConfig, run_episode: RunEpisode, out_dir: Path,
    run_batch: RunBatch | None = None,
) -> LoadGenRun:
    """Warm up, run one LoadGen test over `tasks` with `run_episode` as the system under test, read its logs.

    `run_episode(task, on_first_token)` runs one episode; the real one is `Agent.run`, tests pass a null one.
    `run_batch`, the batched agents, runs Offline's query when given (and cfg.batch > 1)."""
    if not tasks:
        raise HarnessError("no tasks to run; pass --suite or --tasks")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.scenario != "Offline" or cfg.batch <= 1:
        run_batch = None
    warmup = warm_up(tasks, run_episode, max(cfg.warmup, cfg.batch) if run_batch else cfg.warmup, run_batch)
    settings = build_settings(cfg, warmup)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    system = AgentSUT(tasks, run_episode, out_dir / EPISODES_FILE, run_batch)
    sut = lg.ConstructSUT(system.issue_queries, system.flush_queries)
    # Every task fits in memory: the whole list is the performance set, and loading is nothing to do.
    qsl = lg.ConstructQSL(len(tasks), len(tasks), lambda indices: None, lambda indices: None)
    # LoadGen runs in a thread of its own so that Ctrl-C reaches this one (a signal waits while the main
    # thread is inside LoadGen's C++): it then lets the episode in flight finish, completes the samples
    # not yet started unrun, and LoadGen ends its test and writes its logs.
    # (An Event, not Thread.join: a KeyboardInterrupt inside join can leave the thread looking finished.)
    finished = threading.Event()

    def run_test() -> None:
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        finally:
            finished.set()

    test = threading.Thread(target=run_test, name="nanocodegen-loadgen", daemon=True)
    t0 = time.perf_counter()
    interrupted = False
    try:
        test.start()
        while True:
            try:
                if finished.wait(0.1):
                    break
            except KeyboardInterrupt:
                interrupted = True
                system.stopping.set()
    finally:
        if test.ident is not None:
            finished.wait()  # LoadGen must be done with the SUT and QSL before they are destroyed
        wall = time.perf_counter() - t0
        system.close()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if system.errors:
        raise HarnessError(f"{len(system.errors)} episode(s) failed, first: {system.errors[0]}")
    log = read_detail_log(out_dir / DETAIL_LOG)
    return LoadGenRun(log, loadgen_metrics(cfg.scenario, log["values"]), system.records, warmup, wall, interrupted)


def default_out_dir(cfg: LoadGenConfig) -> Path:
    return Path("runs") / datetime.now().strftime(f"loadgen-{cfg.scenario}-{cfg.mode}-%Y%m%d-%H%M%S")


def loadgen_benchmark(
    tasks: list[tuple[str, Task]],
    cfg: LoadGenConfig,
    agent_config: AgentConfig,
    checkpoint: str | None = None,
    out: str | None = None,
    device: str = "auto",
    profile: str | None = None,
    allow_weak_isolation: bool = False,
) -> dict:
    """`nanocodegen loadgen`: the shipped (or given) model as the system under test; writes OUT/results.json
    in the report shape and returns it. Accuracy mode also scores the accuracy log into OUT/accuracy.json.

    `profile` defaults to "min" for a --quick performance run (accuracy mode runs every task anyway)."""
    from nanocodegen.agent import Agent
    from nanocodegen.bench import collector_frozen, peak_rss_bytes, pick_device, prepare_engine, write_json
    from nanocodegen.checkpoint import checkpoint_sha256, default_checkpoint, load_checkpoint
    from nanocodegen.tasks import load_suite
    from nanocodegen.verifier import CodeVerifier

    if cfg.threads < 1:
        raise HarnessError("--threads must be at least 1")
    torch.set_num_threads(cfg.threads)
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
    dev = pick_device(device)
    model, tok, ckpt_config = load_checkpoint(ckpt, dev)
    torch.manual_seed(agent_config.seed)
    out_dir = Path(out) if out else default_out_dir(cfg)
    profile = profile or ("min" if cfg.quick and cfg.mode == "performance" else "max")
    split_tasks = len(load_suite(QUALITY_SUITE))
    feedback_budget = ckpt_config.get("prompt", {}).get("feedback_budget", 32)
    batched = cfg.scenario == "Offline" and cfg.batch > 1
    if cfg.batch < 1:
        raise HarnessError("--batch must be at least 1")
    # Batched agents verify in threads that overlap generation: one sandbox worker per core at most.
    verify_workers = max(1, min(cfg.batch, os.cpu_count() or 1)) if batched else 1
    compiled = prepare_engine(model, cfg.precision, cfg.compile, cache_rows(cfg.batch, len(tasks)) if batched else 1)
    with CodeVerifier(workers=verify_workers, allow_weak_isolation=allow_weak_isolation) as verifier:
        verifier.sandbox.require_isolation()  # now, not at the first attempt
        isolation = verifier.isolation
        agent = Agent(model, tok, verifier, agent_config, feedback_budget)
        runner = BatchedAgents(model, tok, verifier, agent_config, cfg.batch, feedback_budget,
                               verify_threads=verify_workers) if batched else None
        with collector_frozen():
            run = run_loadgen(tasks, cfg, agent.run, out_dir, runner.run if runner else None)
        accuracy = None
        if cfg.mode == "accuracy" and not run.interrupted:
            accuracy = score_accuracy_log(out_dir / ACCURACY_LOG, tasks, verifier, agent_config.max_attempts,
                                          split_tasks, agent_config.timeout_ms)
            write_json(out_dir / ACCURACY_FILE, accuracy)
    summary = summarize(run.records, agent_config.max_attempts, run.wall_s)
    summary["peak_rss_bytes"] = peak_rss_bytes()
    metrics = {**run.metrics, **time_shares(summary["time_ms"]),
               "loadgen_errors": len(run.log["errors"]), "loadgen_warnings": len(run.log["warnings"])}
    if accuracy:  # LoadGen measures no timing in accuracy mode: its result keys are absent
        metrics = {k: v for k, v in metrics.items() if v is not None}
        metrics.update({k: accuracy[k] for k in ("solve_rate", "pass_at_1", "mean_attempts_to_correct")})
    name, unit, better = HEADLINES["accuracy" if accuracy else cfg.scenario]
    metrics["headline"] = {"name": name, "value": metrics.get(name), "unit": unit, "better": better}
    values = run.log["values"]
    unscored = {**quality([], split_tasks), "note": "performance mode; see --mode accuracy"}
    results = {
        **report_header(out_dir.name, profile, dev, agent_config.seed, sorted({s for s, _ in tasks})),
        "status": "interrupted" if run.interrupted else "complete",
        "metrics": metrics,
        "quality": accuracy["quality"] if accuracy else unscored,
        "config": {**asdict(agent_config), **asdict(cfg), "checkpoint": str(ckpt), "device": str(dev),
                   "out": str(out_dir), "tasks": len(tasks)},
        "provenance": {**provenance(dev), "sandbox": isolation, "seed": agent_config.seed,
                       "checkpoint_sha256": checkpoint_sha256(ckpt), "checkpoint_config": ckpt_config},
        "loadgen": {
            "version": values.get("loadgen_version"),
            "settings": {k[len("effective_"):]: v for k, v in values.items() if k.startswith("effective_")},
            "results": {k: v for k, v in values.items() if k.startswith(("result_", "early_stopping"))},
            "errors": run.log["errors"],
            "warnings": run.log["warnings"],
            "logs": [SUMMARY_LOG, DETAIL_LOG, ACCURACY_LOG],
        },
        "warmup": asdict(run.warmup),
        "episodes_file": EPISODES_FILE,
        "summary": summary,
    }
    if compiled:
        results["compile"] = compiled
    if accuracy:
        results["accuracy"] = accuracy
    write_json(out_dir / RESULTS_FILE, results)
    if run.interrupted:  # the folder holds what ran; the command reports the interruption
        raise KeyboardInterrupt
    return results


def print_loadgen_summary(console, results: dict) -> None:
    """LoadGen's verdict and the headline numbers; in accuracy mode the scores with PASS or FAIL."""
    from rich.table import Table

    from nanocodegen.metrics import verdict

    cfg, m = results["config"], results["metrics"]
    table = Table(title=f"nanocodegen loadgen — {cfg['scenario']}, {cfg['mode']} mode", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    fmt = lambda v, unit="": "-" if v is None else (f"{v:.4g}{unit}" if isinstance(v, float) else f"{v}{unit}")
    if cfg["mode"] == "performance":
        table.add_row("LoadGen result", str(m.get("result_validity")))
        table.add_row("queries", fmt(m.get("query_count")))
    for key, unit in (("latency_ms_p50", " ms"), ("latency_ms_p90", " ms"), ("ttft_ms_p90", " ms"),
                      ("tpot_ms_p90", " ms"), ("samples_per_s", "/s"), ("completed_samples_per_s", "/s"),
                      ("tokens_per_s", "/s")):
        if m.get(key) is not None:
            table.add_row(key, fmt(m[key], unit))
    if results.get("accuracy"):
        a, q = results["accuracy"], results["quality"]
        table.add_row("solve rate", f"{a['solve_rate']:.1%} ({a['solved']}/{a['tasks']})")
        table.add_row("pass@1", f"{a['pass_at_1']:.1%}")
        table.add_row("mean attempts to correct", fmt(a["mean_attempts_to_correct"]))
        q_value = "-" if q["value"] is None else f"{q['value']:.1%}"
        table.add_row(f"quality: {q['metric']} ≥ {q['target']:.0%}", f"{q_value} {verdict(q)}")
    console.print(table)
    errors = results["loadgen"]["errors"]
    if errors:
        console.print(f"[red]LoadGen logged {len(errors)} error(s); first: {errors[0]}[/red]")
    console.print(f"LoadGen logs: {cfg['out']}/{SUMMARY_LOG}, {DETAIL_LOG}; per-attempt records: {EPISODES_FILE}")
