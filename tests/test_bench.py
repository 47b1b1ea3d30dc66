"""bench's report shape, --resume and --repeat (on the shipped model, seed suite: a few seconds)."""

import json
import subprocess
import sys

from nanocodegen import bench
from nanocodegen.cli import main
from nanocodegen.metrics import QUALITY_TARGET


def read(path):
    return json.loads(path.read_text())


def test_results_follow_the_report_shape(tmp_path):
    assert main(["bench", "--suite", "seed", "--suite", "synthetic", "--limit", "2", "--out", str(tmp_path)]) == 0
    r = read(tmp_path / "results.json")
    assert r["schema"] == "mlperf-edu-report/0.1" and r["id"] == tmp_path.name
    assert (r["workload"], r["profile"], r["backend"], r["data_mode"], r["seed"]) == (
        "nanocodegen-agent", "min", "pytorch-cpu", "synthetic-deterministic", 0)
    assert r["status"] == "complete" and r["metrics"]["headline"]["name"] == "tasks_per_s"
    assert r["metrics"]["tasks"] == 4 and r["metrics"]["headline"]["value"] > 0
    q = r["quality"]
    assert (q["metric"], q["target"], q["tasks"]) == ("synthetic_test_solve_rate", QUALITY_TARGET, 2)
    assert q["target_met"] is None  # 2 of 312 tasks: a value, no verdict
    prov = r["provenance"]
    assert prov["libraries"]["mlcommons-loadgen"] and prov["hardware"]["cores"] and "git_dirty" in prov
    assert len(prov["checkpoint_sha256"]) == 64 and prov["seed"] == 0
    assert (tmp_path / "report.html").is_file() and (tmp_path / "plots" / "time_split.png").is_file()


def test_resume_runs_only_the_unfinished_tasks(tmp_path, monkeypatch):
    calls = []
    real_run = bench.Agent.run

    def run_then_interrupt(self, task):
        calls.append(task.id)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_run(self, task)

    monkeypatch.setattr(bench.Agent, "run", run_then_interrupt)
    assert main(["bench", "--suite", "seed", "--out", str(tmp_path)]) == 130
    with (tmp_path / "episodes.jsonl").open("a") as f:
        f.write('{"id": "seed/3", "prom')  # a write cut short by the interruption
    calls.clear()
    monkeypatch.setattr(bench.Agent, "run", lambda self, task: calls.append(task.id) or real_run(self, task))
    assert main(["bench", "--suite", "seed", "--out", str(tmp_path), "--resume"]) == 0
    assert calls == [f"seed/{i}" for i in range(3, 8)]
    r = read(tmp_path / "results.json")
    assert r["status"] == "complete" and r["resumed"]["episodes_kept"] == 3
    assert [e["id"] for e in r["episodes"]] == [f"seed/{i}" for i in range(8)]
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"seed/{i}" for i in range(8)]


def test_resume_refuses_other_settings_or_a_complete_run(tmp_path, capsys):
    assert main(["bench", "--suite", "seed", "--limit", "1", "--out", str(tmp_path)]) == 0
    assert main(["bench", "--suite", "seed", "--limit", "1", "--out", str(tmp_path), "--resume"]) == 2
    assert "complete run" in capsys.readouterr().err
    r = read(tmp_path / "results.json")
    r["status"] = "interrupted"
    (tmp_path / "results.json").write_text(json.dumps(r))
    assert main(["bench", "--suite", "seed", "--limit", "1", "--max-attempts", "2", "--out", str(tmp_path),
                 "--resume"]) == 2
    assert "max_attempts=5" in capsys.readouterr().err
    assert main(["bench", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_repeat_runs_fresh_processes_and_reports_the_cv(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nanocodegen", "bench", "--suite", "seed", "--limit", "2",
                           "--repeat", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = read(tmp_path / "repeat.json")
    assert summary["repeats"] == 2 and len(summary["headline"]["values"]) == 2
    assert summary["headline"]["name"] == "tasks_per_s" and summary["headline"]["cv"] >= 0
    assert "--repeat" not in summary["command"] and "--out" not in summary["command"]
    pids = {read(tmp_path / f"run-{k}" / "results.json")["id"] for k in (1, 2)}
    assert pids == {"run-1", "run-2"}
    assert "CV" in proc.stderr


def test_episode_records_turn_into_the_same_dicts_as_asdict():
    from dataclasses import asdict

    from nanocodegen.records import AttemptRecord, EpisodeRecord

    attempt = AttemptRecord(1, 20, 12, 20, 0, 1.5, 3.0, 1.7, 0.9, "wrong_output", 4096, "print(1)", "1", "expected 2")
    episode = EpisodeRecord("t1", "say 2", "2", False, [attempt, attempt], None, 40, 24, 9.5, "synthetic", "sum", 1)
    as_dict = episode.as_dict()
    assert as_dict == asdict(episode)
    as_dict["attempts"][0]["code"] = "changed"  # a copy: the record is untouched
    assert episode.attempts[0].code == "print(1)"
