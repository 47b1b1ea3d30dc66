import json
import math

import pytest
from rich.console import Console

from nanocodegen.checkpoint import load_checkpoint, read_train_log
from nanocodegen.config import TrainConfig
from nanocodegen.train import lr_at, model_config_for, pad_batch, train


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    values = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_pad_batch_pads_inputs_and_ignores_padded_targets():
    x, y = pad_batch([([1, 2, 3], [-100, 5, 6]), ([4], [7])], pad_id=0)
    assert x.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert y.tolist() == [[-100, 5, 6], [7, -100, -100]]


def small_run(out, steps=40):
    cfg = TrainConfig(max_steps=steps, batch_size=16, train_tasks=300, tokenizer_episodes=300, vocab_size=400,
                      eval_interval=steps // 2, warmup_steps=5, lr=3e-3, data_workers=1, out=str(out))
    return train(model_config_for("smoke"), cfg, command="nanocodegen train --preset smoke",
                 console=Console(quiet=True))


def test_a_short_run_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    path = small_run(tmp_path / "a")
    log = read_train_log(path)
    assert len(log) == 40
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert math.isfinite(log[-1]["val_loss"])
    model, tok, config = load_checkpoint(path)
    assert config["train"]["max_steps"] == 40 and config["command"].startswith("nanocodegen train")
    assert json.loads((path / "config.json").read_text())["result"]["val_loss"] == pytest.approx(
        log[-1]["val_loss"], abs=1e-4
    )


def test_training_is_reproducible(tmp_path):
    """Same seed, same data and batches (token counts match exactly) and the same loss curve up to
    the float noise of CPU kernels (oneDNN may pick other bf16 paths from run to run)."""
    a = read_train_log(small_run(tmp_path / "a", steps=10))
    b = read_train_log(small_run(tmp_path / "b", steps=10))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3)
