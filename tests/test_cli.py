import json
import subprocess
import sys

import pytest

from nanocodegen import bench
from nanocodegen.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nanocodegen", *args], capture_output=True, text=True, timeout=300)


def test_shipped_model_solves_the_seed_suite(tmp_path):
    proc = run_cli("bench", "--suite", "seed", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["summary"]["solved"] == 8 and results["summary"]["tasks"] == 8
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 8
    attempt = results["episodes"][0]["attempts"][0]
    for key in ("attempt", "context_tokens", "new_tokens", "prefill_ms", "decode_ms", "ttft_ms", "verify_ms",
                "outcome", "kv_cache_bytes", "code", "feedback"):
        assert key in attempt
    prov = results["provenance"]
    assert len(prov["checkpoint_sha256"]) == 64 and prov["torch"] and "seed" in prov
    assert str(tmp_path) in proc.stdout


def test_user_task_file(tmp_path):
    tasks = tmp_path / "mine.jsonl"
    tasks.write_text('{"id": "a", "prompt": "Return 3 ** 2", "expected": "9"}\n'
                     '{"id": "b", "prompt": "Return the sum of [4, 5]", "expected": "9"}\n')
    assert main(["bench", "--tasks", str(tasks), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [e["id"] for e in results["episodes"]] == ["a", "b"]
    assert results["episodes"][0]["suite"] == "mine"
    sandbox = results["provenance"]["sandbox"]  # the isolation layers in force, and whether weak was allowed
    assert sandbox["complete"] and not sandbox["allow_weak_isolation"] and sandbox["layers"]["seccomp_filter"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--checkpoint", "/no/such/ckpt"], "does not exist"),
        (["bench", "--limit", "0"], "--limit must be at least 1"),
        (["bench", "--suite", "nope"], "unknown suite 'nope'"),
        (["bench", "--tasks", "/no/such.jsonl"], "no such task file"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_task_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "Return 1", "expected": "1"}\n{"id": "b", "prompt": 3}\n')
    assert main(["bench", "--tasks", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (ckpt / name).write_text("garbage")
    proc = run_cli("bench", "--suite", "seed", "--checkpoint", str(ckpt))
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_flag_value_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["bench", "--max-attempts", "many"])
    assert e.value.code == 2


def test_interrupted_run_keeps_finished_episodes(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_run = bench.Agent.run

    def run_then_interrupt(self, task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(self, task)

    monkeypatch.setattr(bench.Agent, "run", run_then_interrupt)
    assert main(["bench", "--suite", "seed", "--out", str(tmp_path)]) == 130
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and len(results["episodes"]) == 2
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 2


def test_verify_checks_reference_solutions(capsys):
    assert main(["verify", "--suite", "seed", "--canonical", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed: 8/8 reference solutions pass" in out and "checks/s" in out and "isolation complete" in out
    assert main(["verify", "--suite", "seed"]) == 2
    assert "--canonical" in capsys.readouterr().err


def test_doctor_reports_complete_isolation(capsys):
    assert main(["doctor"]) == 0
    assert "Isolation: complete." in capsys.readouterr().out


def test_a_missing_sandbox_layer_is_a_one_line_error(monkeypatch, capsys):
    # The sandbox as it would be on a kernel without Landlock: the benchmark refuses, naming the flag.
    from nanocodegen import verify_suite
    from nanocodegen.verifier import CodeVerifier

    weak = lambda workers, allow_weak_isolation=False: CodeVerifier(  # noqa: E731
        workers, allow_weak_isolation=allow_weak_isolation, disable_layers=("landlock",))
    monkeypatch.setattr(verify_suite, "CodeVerifier", weak)
    assert main(["verify", "--suite", "seed", "--canonical", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fs_read_confined" in err and "--allow-weak-isolation" in err
    assert main(["verify", "--suite", "seed", "--canonical", "--limit", "1", "--allow-weak-isolation"]) == 0
    assert "INCOMPLETE, missing fs_read_confined" in capsys.readouterr().out
