"""The LoadGen harness with a null system under test: real LoadGen, real logs, real accuracy scoring.

The episode runners here are scripted stand-ins for `Agent.run` (they write the task's reference program,
or a wrong one, without a model), as LoadGen's own perf tests use a null SUT: they test the harness around
the agent, not the agent.
"""

import json
import os
import signal
import threading
import time

import mlperf_loadgen as lg
import pytest

from nanocodegen import harness
from nanocodegen.cli import main
from nanocodegen.config import LoadGenConfig
from nanocodegen.harness import HarnessError, build_settings, run_loadgen, score_accuracy_log
from nanocodegen.records import AttemptRecord, EpisodeRecord
from nanocodegen.tasks import load_suite, seed_tasks
from nanocodegen.verifier import CodeVerifier

SEED = [("seed", t) for t in seed_tasks()]


def attempt(k: int, code: str, outcome: str, new_tokens: int = 4) -> AttemptRecord:
    return AttemptRecord(attempt=k, context_tokens=10 * k, new_tokens=new_tokens, prefill_tokens=10, cached_tokens=0,
                         prefill_ms=1.0, decode_ms=2.0, ttft_ms=1.0, verify_ms=0.5, outcome=outcome,
                         kv_cache_bytes=0, code=code, output=None, feedback="")


def null_episode(task, on_first_token, delay_s: float = 0.0, attempts: int = 1, wrong: bool = False):
    """Scripted stand-in for Agent.run: `attempts` attempts, the last one the reference program (or a wrong one)."""
    if on_first_token:
        on_first_token(7)
    time.sleep(delay_s)
    record = EpisodeRecord(id=task.id, prompt=task.prompt, expected=task.expected, solved=not wrong)
    record.attempts = [attempt(k, "result = None", "wrong_output") for k in range(1, attempts)]
    record.attempts.append(attempt(attempts, "result = 'nope'" if wrong else task.solution,
                                   "wrong_output" if wrong else "correct"))
    record.attempts_to_correct = None if wrong else attempts
    record.total_new_tokens = sum(a.new_tokens for a in record.attempts)
    return record


def quick(**overrides) -> LoadGenConfig:
    # --quick with a shorter minimum duration, so the null SUT finishes in well under a second; SingleStream
    # expects 10 us per query, since the null SUT beats --quick's 1 ms and LoadGen would run out of queries.
    return LoadGenConfig(**{"quick": True, "warmup": 0, "min_duration_ms": 200, "target_qps": 1e5, **overrides})


def read_records(out):
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def test_single_stream_quick_is_valid_with_token_latencies(tmp_path):
    run = run_loadgen(SEED, quick(), null_episode, tmp_path)
    assert run.metrics["result_validity"] == "VALID", (tmp_path / "mlperf_log_summary.txt").read_text()
    assert run.log["errors"] == []  # first tokens and n_tokens were reported as LoadGen wants them
    assert run.metrics["query_count"] >= 64  # early stopping's minimum for the 90th percentile
    assert run.metrics["ttft_ms_p90"] is not None and run.metrics["tpot_ms_p90"] is not None
    assert "Result is : VALID" in (tmp_path / "mlperf_log_summary.txt").read_text()
    records = read_records(tmp_path)
    assert len(records) == run.metrics["query_count"]
    for r in records:  # per-attempt records keyed by the QSL index LoadGen issued
        assert r["id"] == SEED[r["sample_index"]][1].id and r["attempts"][0]["code"]


def test_offline_quick_is_valid(tmp_path):
    run = run_loadgen(SEED, quick(scenario="Offline", min_duration_ms=100, target_qps=None),
                      lambda t, cb: null_episode(t, cb, delay_s=0.002), tmp_path)
    assert run.metrics["result_validity"] == "VALID", (tmp_path / "mlperf_log_summary.txt").read_text()
    assert run.metrics["query_count"] == 1 and len(run.records) == 128  # Offline: one query of 128 samples
    assert run.log["errors"] == [] and run.metrics["samples_per_s"] > 0


class ScriptedBatch:
    """Scripted stand-in for BatchedAgents.run: finishes the episodes in reverse order (as a batch may),
    reporting every first token before any episode ends; remembers the batch sizes it was given."""

    def __init__(self):
        self.sizes = []

    def __call__(self, tasks, on_episode, on_first_token, should_stop):
        self.sizes.append(len(tasks))
        for i in range(len(tasks)):
            on_first_token(i, 7)
        for i in reversed(range(len(tasks))):
            on_episode(i, null_episode(tasks[i], None))


def test_offline_query_goes_to_the_batched_agents(tmp_path):
    batch = ScriptedBatch()
    cfg = quick(scenario="Offline", min_duration_ms=0, target_qps=None, warmup=4, batch=16)
    run = run_loadgen(SEED, cfg, lambda t, cb: pytest.fail("Offline must not run episode by episode"), tmp_path,
                      run_batch=batch)
    assert batch.sizes == [16, 16, 128]  # the warm-up (max(warmup, batch) episodes, twice), then the one query
    assert run.log["errors"] == [] and run.metrics["result_validity"] == "VALID"
    records = read_records(tmp_path)
    assert len(records) == 128 and len({r["query_id"] for r in records}) == 128
    for r in records:  # each sample completed with its own episode, whatever the finishing order
        assert r["id"] == SEED[r["sample_index"]][1].id


def test_single_stream_ignores_the_batched_agents(tmp_path):
    batch = ScriptedBatch()
    run = run_loadgen(SEED, quick(batch=16), null_episode, tmp_path, run_batch=batch)
    assert batch.sizes == [] and run.metrics["result_validity"] == "VALID"


def test_a_failing_batch_completes_its_samples_then_fails_the_run(tmp_path):
    def broken(tasks, on_episode, on_first_token, should_stop):
        on_episode(0, null_episode(tasks[0], None))
        if len(tasks) > 16:  # the warm-up's batches pass
            raise RuntimeError("batch died")

    cfg = quick(scenario="Offline", min_duration_ms=0, target_qps=None, batch=16)
    with pytest.raises(HarnessError, match=r"127 episode\(s\) failed.*batch died"):
        run_loadgen(SEED, cfg, null_episode, tmp_path, run_batch=broken)


def interrupt_after(seconds: float) -> threading.Timer:
    """Ctrl-C, as the terminal sends it, to this process after `seconds`."""
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_ends_the_test_early_and_keeps_what_ran(tmp_path):
    cfg = quick(min_duration_ms=60_000, min_query_count=10_000, target_qps=100.0)
    interrupt_after(0.5)
    t0 = time.perf_counter()
    run = run_loadgen(SEED, cfg, lambda t, cb: null_episode(t, cb, delay_s=0.01), tmp_path)
    assert run.interrupted and time.perf_counter() - t0 < 20  # not the 60 s minimum duration
    records = read_records(tmp_path)
    assert 0 < len(records) == len(run.records)  # the episodes that ran are kept, and only they
    assert (tmp_path / "mlperf_log_detail.txt").is_file()  # LoadGen ended its test and wrote its logs


def test_ctrl_c_stops_the_batched_agents_starting_episodes(tmp_path):
    started = []

    def slow_batch(tasks, on_episode, on_first_token, should_stop):
        for i, task in enumerate(tasks):
            if should_stop():
                return
            started.append(i)
            on_episode(i, null_episode(task, None, delay_s=0.01))

    cfg = quick(scenario="Offline", min_duration_ms=0, min_query_count=5_000, target_qps=None, batch=4)
    interrupt_after(0.5)
    run = run_loadgen(SEED, cfg, null_episode, tmp_path, run_batch=slow_batch)
    assert run.interrupted and 0 < len(run.records) < 5_000
    assert len(read_records(tmp_path)) == len(run.records)


def test_server_runs(tmp_path):
    run = run_loadgen(SEED, quick(scenario="Server", target_qps=200.0), null_episode, tmp_path)
    assert run.metrics["result_validity"] in ("VALID", "INVALID")
    assert run.metrics["query_count"] >= 16 and run.metrics["completed_samples_per_s"] > 0
    assert run.log["values"]["effective_scenario"] == "Server"


def test_first_token_is_reported_even_if_the_runner_never_signals_it(tmp_path):
    run = run_loadgen(SEED, quick(), lambda task, cb: null_episode(task, None), tmp_path)
    assert run.log["errors"] == [] and run.metrics["result_validity"] == "VALID"


def test_a_failing_episode_fails_the_run_after_loadgen_finishes(tmp_path):
    def broken(task, cb):
        raise RuntimeError("sandbox died")

    with pytest.raises(HarnessError, match="sandbox died"):
        run_loadgen(SEED, quick(), broken, tmp_path)


def test_warmup_measures_the_episode_rate():
    w = harness.warm_up(SEED, lambda t, cb: null_episode(t, cb, delay_s=0.01), 4)
    assert w.episodes == 4 and 20 < w.episodes_per_s < 100
    assert harness.warm_up(SEED, null_episode, 0).episodes_per_s is None


def test_settings_are_layered_quick_then_user_conf_then_flags(tmp_path):
    warm = harness.Warmup(8, 4.0, 250.0)
    s = build_settings(LoadGenConfig(scenario="Offline"), warm)
    assert s.min_duration_ms == 600_000  # mlperf.conf's official minimum
    assert s.offline_expected_qps == pytest.approx(8.0) and s.use_token_latencies
    assert s.mode == lg.TestMode.PerformanceOnly
    assert build_settings(LoadGenConfig(scenario="Offline", quick=True), warm).min_duration_ms == 3_000
    conf = tmp_path / "user.conf"
    conf.write_text("nanocodegen.SingleStream.min_query_count = 200\n*.*.min_duration = 1234\n")
    s = build_settings(LoadGenConfig(quick=True, user_conf=str(conf), mode="accuracy"), warm)
    assert (s.min_query_count, s.min_duration_ms, s.mode) == (200, 1234, lg.TestMode.AccuracyOnly)
    s = build_settings(LoadGenConfig(quick=True, user_conf=str(conf), min_query_count=300), warm)
    assert s.min_query_count == 300
    s = build_settings(LoadGenConfig(scenario="Server", target_qps=3.0), warm)
    assert s.server_target_qps == 3.0 and s.ttft_latency == harness.SERVER_TTFT_NS


def test_bad_user_conf_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="no such file"):
        build_settings(LoadGenConfig(user_conf=str(tmp_path / "missing.conf")), harness.Warmup(0, None, None))
    bad = tmp_path / "bad.conf"
    bad.write_text("nanocodegen.SingleStream.min_query_count = lots\n")
    with pytest.raises(HarnessError, match="could not parse"):
        build_settings(LoadGenConfig(user_conf=str(bad)), harness.Warmup(0, None, None))


def test_accuracy_mode_scores_the_log_by_reverifying_programs(tmp_path):
    tasks = [("synthetic", t) for t in load_suite("synthetic")]
    wrong = {i for i in range(len(tasks)) if i % 10 == 0}  # 32 of 312 tasks get a wrong program
    index = {t.id: i for i, (_, t) in enumerate(tasks)}

    def scripted(task, cb):  # solved ones need 1, 2 or 3 attempts
        i = index[task.id]
        return null_episode(task, cb, attempts=1 + i % 3, wrong=i in wrong)

    run = run_loadgen(tasks, quick(scenario="Offline", mode="accuracy", target_qps=None), scripted, tmp_path)
    assert len(run.records) == len(tasks)  # accuracy mode issues every sample once
    with CodeVerifier() as verifier:
        acc = score_accuracy_log(tmp_path / "mlperf_log_accuracy.json", tasks, verifier, 5, len(tasks))
    solved = [i for i in range(len(tasks)) if i not in wrong]
    assert acc["solved"] == len(solved) and acc["disagreements"] == 0
    assert acc["solve_rate"] == pytest.approx(len(solved) / 312)
    assert acc["pass_at_1"] == pytest.approx(sum(1 for i in solved if i % 3 == 0) / 312)
    assert acc["mean_attempts_to_correct"] == pytest.approx(sum(1 + i % 3 for i in solved) / len(solved))
    q = acc["quality"]
    assert q["value"] == pytest.approx(len(solved) / 312) and q["target_met"] is False  # 89.7 % < 95 %


def test_accuracy_log_scored_against_other_tasks_is_refused(tmp_path):
    run_loadgen(SEED, quick(mode="accuracy"), null_episode, tmp_path)
    others = [("seed", t) for t in reversed(seed_tasks())]
    with CodeVerifier() as verifier, pytest.raises(HarnessError, match="score the log with the tasks"):
        score_accuracy_log(tmp_path / "mlperf_log_accuracy.json", others, verifier, 5, 312)
    with CodeVerifier() as verifier:
        acc = score_accuracy_log(tmp_path / "mlperf_log_accuracy.json", SEED, verifier, 5, 312)
    assert acc["solve_rate"] == 1.0 and acc["quality"]["target_met"] is None  # no synthetic tasks: no verdict


def test_loadgen_command_accuracy_mode_on_the_shipped_model(tmp_path, capsys):
    assert main(["loadgen", "--suite", "seed", "--mode", "accuracy", "--warmup", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["schema"] == "mlperf-edu-report/0.1" and r["profile"] == "max" and r["status"] == "complete"
    acc = json.loads((tmp_path / "accuracy.json").read_text())
    records = read_records(tmp_path)
    assert sorted(rec["sample_index"] for rec in records) == list(range(8))
    assert acc["solved"] == sum(rec["solved"] for rec in records) and acc["disagreements"] == 0
    assert r["metrics"]["solve_rate"] == acc["solve_rate"] and r["quality"]["target_met"] is None
    assert r["metrics"]["headline"]["name"] == "solve_rate" and None not in r["metrics"].values()
    assert "NOT EVALUATED" in capsys.readouterr().err
    assert (tmp_path / "report.html").is_file() and (tmp_path / "mlperf_log_detail.txt").is_file()


def test_loadgen_command_performance_mode_on_the_shipped_model(tmp_path):
    assert main(["loadgen", "--suite", "seed", "--scenario", "Offline", "--min-query-count", "8",
                 "--min-duration-ms", "100", "--warmup", "2", "--batch", "4", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["metrics"]["headline"]["name"] == "samples_per_s" and r["metrics"]["headline"]["value"] > 0
    assert r["loadgen"]["settings"]["scenario"] == "Offline" and r["loadgen"]["errors"] == []
    assert r["warmup"]["episodes"] == 4 and r["quality"]["value"] is None  # batched: max(warmup, batch)
    assert len(read_records(tmp_path)) == r["metrics"]["query_count"] * r["loadgen"]["settings"]["samples_per_query"]


def test_loadgen_bad_user_conf_is_a_one_line_error(tmp_path, capsys):
    assert main(["loadgen", "--suite", "seed", "--user-conf", str(tmp_path / "nope.conf"), "--warmup", "0",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and len(err.strip().splitlines()) == 1


def test_loadgen_offline_runs_the_compiled_engine_and_records_its_settings(tmp_path):
    assert main(["loadgen", "--suite", "seed", "--scenario", "Offline", "--min-query-count", "8",
                 "--min-duration-ms", "100", "--warmup", "2", "--batch", "4", "--compile", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["config"]["compile"] is True and r["config"]["precision"] == "fp32" and r["config"]["threads"] == 1
    assert r["metrics"]["headline"]["value"] > 0 and r["loadgen"]["errors"] == []
    assert main(["loadgen", "--suite", "seed", "--threads", "0", "--out", str(tmp_path / "bad")]) == 2
