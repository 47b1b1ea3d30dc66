"""Reports and comparisons from run folders built here from hand-made episode records."""

import base64
import json
import re

import pytest

from nanocodegen.checkpoint import default_checkpoint
from nanocodegen.cli import main
from nanocodegen.compare import compare_runs
from nanocodegen.metrics import bench_metrics, quality, summarize
from nanocodegen.report import ReportError, load_run, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def episode(i: int, attempts: int, solved: bool) -> dict:
    return {
        "id": f"synthetic/test/x/{i}", "suite": "synthetic", "solved": solved,
        "attempts_to_correct": attempts if solved else None, "total_prompt_tokens": 0, "total_new_tokens": 0,
        "attempts": [{"attempt": k, "context_tokens": 20 + 30 * (k - 1), "new_tokens": 12, "prefill_ms": 1.0 + k,
                      "decode_ms": 10.0, "ttft_ms": 1.0, "verify_ms": 2.0, "kv_cache_bytes": 0,
                      "outcome": "correct" if solved and k == attempts else "wrong_output"}
                     for k in range(1, attempts + 1)],
    }


def make_run(path, episodes, checkpoint=None, sha="a" * 64, tasks_per_s=2.0, inline=True):
    summary = summarize(episodes, 5, wall_seconds=len(episodes) / tasks_per_s if episodes else 1.0)
    metrics = bench_metrics(summary)
    metrics["headline"] = {"name": "tasks_per_s", "value": metrics["tasks_per_s"], "unit": "tasks/s",
                           "better": "higher"}
    results = {"schema": "mlperf-edu-report/0.1", "id": path.name, "workload": "nanocodegen-agent", "profile": "max",
               "status": "complete", "backend": "pytorch-cpu", "data_mode": "synthetic-deterministic", "seed": 0,
               "metrics": metrics, "quality": quality(episodes, len(episodes)),
               "config": {"max_attempts": 5, "checkpoint": str(checkpoint or path / "no-checkpoint")},
               "provenance": {"checkpoint_sha256": sha, "hardware": {"cpu": "test cpu", "cores": 2}},
               "summary": summary}
    path.mkdir()
    if inline:
        results["episodes"] = episodes
    else:
        (path / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (path / "results.json").write_text(json.dumps(results))
    return path


EPISODES = [episode(i, 1 + i % 3, i % 5 != 0) for i in range(20)]  # 16 of 20 solved: 80 %, below the target


def test_html_report_is_self_contained_with_every_plot(tmp_path):
    run = make_run(tmp_path / "run-a", EPISODES, checkpoint=default_checkpoint())
    html = write_report(run).read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 5  # latency vs context, attempts histogram, tokens, time split, training loss
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert not re.search(r"<script|<link|src=\"http|url\(", html)  # nothing fetched from elsewhere
    assert "FAIL" in html and "run-a" in html and "Training loss" in html
    pngs = sorted(p.name for p in (run / "plots").iterdir())
    assert pngs == ["attempts_to_correct.png", "latency_vs_context.png", "time_split.png", "tokens_per_attempt.png",
                    "training_loss.png"]


def test_loadgen_style_run_reads_episodes_file_and_embeds_the_summary(tmp_path):
    run = make_run(tmp_path / "lg", EPISODES, inline=False)
    (run / "mlperf_log_summary.txt").write_text("Result is : VALID\n")
    results, episodes = load_run(run)
    assert len(episodes) == 20
    html = write_report(run).read_text()
    assert "Result is : VALID" in html and "No training curve" in html
    assert html.count("data:image/png;base64,") == 4


def test_a_run_without_episodes_still_gets_a_report(tmp_path):
    run = make_run(tmp_path / "empty", [])
    assert "NOT EVALUATED" in write_report(run).read_text()


def test_report_of_a_folder_without_results_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="has no results.json"):
        load_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no results.json" in err and len(err.strip().splitlines()) == 1


def test_compare_puts_metrics_side_by_side_with_ratios(tmp_path, capsys):
    a = make_run(tmp_path / "a", EPISODES, tasks_per_s=2.0)
    b = make_run(tmp_path / "b", EPISODES[:10], sha="b" * 64, tasks_per_s=3.0)
    comparison = compare_runs(a, b)
    rows = {name: (va, vb, ratio) for name, va, vb, ratio in comparison["rows"]}
    assert comparison["rows"][0][0] == "tasks_per_s"  # the headline first
    assert rows["tasks_per_s"][2] == pytest.approx(1.5)
    assert rows["tasks"] == (20.0, 10.0, 0.5)
    assert ("checkpoint_sha256", "a" * 64, "b" * 64) in comparison["differences"]
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "tasks_per_s" in out and "1.500" in out and "checkpoint_sha256" in out


def test_summary_separates_the_attempt_rate_from_the_run_throughput():
    # two episodes whose attempts overlapped in time (as in a batched run): each attempt generated 12 tokens
    # in 12 ms of its own, the whole run took 10 ms of wall time
    episodes = [{**episode(i, 1, True), "total_new_tokens": 12} for i in range(2)]
    summary = summarize(episodes, 5, wall_seconds=0.010)
    assert summary["tokens_per_s"] == pytest.approx(24 / 0.024)
    assert summary["generated_tokens_per_wall_s"] == pytest.approx(24 / 0.010)
    assert bench_metrics(summary)["generated_tokens_per_wall_s"] == summary["generated_tokens_per_wall_s"]
