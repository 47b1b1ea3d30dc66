import copy
import json
import math
import random

import pytest
import torch
from rich.console import Console

from nanocodegen.checkpoint import load_checkpoint, read_train_log
from nanocodegen.config import PRESETS, TrainConfig, preset_configs
from nanocodegen.distributed import Dist
from nanocodegen.model import ModelConfig, NanoCodeGenAgent
from nanocodegen.prompt import IGNORE
from nanocodegen.train import lr_at, pad_batch, train, train_step
from nanocodegen.train_state import STATE_FILE, resume_configs


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


def test_presets_state_only_what_differs_and_flags_win():
    model, cfg = preset_configs("default")
    assert cfg == TrainConfig() and model.d_model == 128 and model.max_seq_len == 384
    model, cfg = preset_configs("smoke", {"n_layers": 2, "d_model": None}, {"max_steps": 7, "lr": None})
    assert model.n_layers == 2 and model.d_model == PRESETS["smoke"].model["d_model"]
    assert cfg.max_steps == 7 and cfg.lr == PRESETS["smoke"].train["lr"]
    assert {"smoke", "default", "gpu"} <= set(PRESETS)
    for name, preset in PRESETS.items():  # every preset names real fields
        assert set(preset.train) <= set(TrainConfig.__dataclass_fields__), name
        preset_configs(name)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_configs("huge")


def test_micro_batches_give_the_gradient_of_the_whole_batch():
    """Summed losses over the global code-token count: accumulating micro-batches of unequal token
    counts takes the same step as one batch (a mean per micro-batch would not)."""
    cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=1, max_seq_len=64, retry_conditioning=False)
    rng = random.Random(0)
    episodes = []  # (inputs, targets): a prompt without loss, then 2-9 code tokens
    for length in (6, 9, 11, 14, 20, 31):
        ids = [rng.randrange(1, 50) for _ in range(length + 1)]
        code = rng.randint(2, min(9, length - 2))
        episodes.append((ids[:-1], [IGNORE] * (length - code) + ids[-code:]))
    torch.manual_seed(0)
    one = NanoCodeGenAgent.from_config(cfg)
    two = copy.deepcopy(one)
    results = []
    for model, micro in ((one, [episodes]), (two, [episodes[:1], episodes[1:]])):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is the gradient itself
        results.append(train_step(model, opt, micro, pad_id=0, dist=Dist(), amp=None, grad_clip=0.0))
    assert results[0][1] == results[1][1] == sum(len(x) for x, _ in episodes)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for p, q in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def smoke_run(out, **changes):
    model_cfg, cfg = preset_configs("smoke", train_overrides={"max_steps": 40, "eval_interval": 20, "out": str(out),
                                                               **changes})
    return train(model_cfg, cfg, command="nanocodegen train --preset smoke", console=Console(quiet=True))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted smoke run of 40 steps, shared by the tests below."""
    return smoke_run(tmp_path_factory.mktemp("straight"))


def test_a_short_run_lowers_the_loss_and_writes_a_loadable_checkpoint(straight):
    log = read_train_log(straight)
    assert [r["step"] for r in log] == list(range(1, 41))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert math.isfinite(log[-1]["val_loss"])
    model, tok, config = load_checkpoint(straight)
    assert config["train"]["max_steps"] == 40 and config["command"].startswith("nanocodegen train")
    assert config["result"]["complete"] and config["result"]["processes"] == 1
    assert json.loads((straight / "config.json").read_text())["result"]["val_loss"] == pytest.approx(
        log[-1]["val_loss"], abs=1e-4
    )
    assert not (straight / STATE_FILE).exists()  # a complete run leaves nothing to resume


def test_a_stopped_and_resumed_run_follows_the_uninterrupted_one(straight, tmp_path):
    """Same seed, same data and batches (token counts match exactly) and the same loss curve up to the
    float noise of CPU kernels (oneDNN may pick other bf16 paths from run to run)."""
    out = smoke_run(tmp_path / "r", stop_at=20)
    assert (out / STATE_FILE).is_file() and len(read_train_log(out)) == 20
    assert not load_checkpoint(out)[2]["result"]["complete"]
    model_cfg, cfg, _ = resume_configs(out)
    assert cfg.stop_at == 0 and cfg.max_steps == 40
    train(model_cfg, cfg, command="nanocodegen train --resume r", console=Console(quiet=True), resume=True)
    a, b = read_train_log(straight), read_train_log(out)
    assert [r["step"] for r in b] == list(range(1, 41))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-3)
    config = json.loads((out / "config.json").read_text())
    assert config["resumes"] == [{"step": 20, "command": "nanocodegen train --resume r"}]
    assert config["command"] == "nanocodegen train --preset smoke" and not (out / STATE_FILE).exists()


def test_resume_refuses_what_would_change_the_run(straight, tmp_path):
    from nanocodegen.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="completed"):
        resume_configs(straight)
    (tmp_path / STATE_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="drop --lr"):
        resume_configs(tmp_path, lr=1e-3, stop_at=None)


def test_settings_that_cannot_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty micro-batches"):
        smoke_run(tmp_path, batch_size=2, grad_accum=4)
    with pytest.raises(ValueError, match="past --max-steps"):
        smoke_run(tmp_path, stop_at=41)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "smoke", "--batch-size", "0", "--out", "{out}"], "--batch-size must be at least 1"),
        (["--preset", "smoke", "--stop-at", "30", "--out", "{out}"], "--stop-at 30 is past --max-steps 20"),
        (["--resume", "{out}"], "has no train_state.pt"),
        (["--resume", "{saved}", "--preset", "smoke"], "drop --preset"),
        (["--resume", "{saved}", "--lr", "0.1", "--stop-at", "5"], "drop --lr"),
    ],
)
def test_train_command_errors_are_one_line_with_exit_code_2(args, message, tmp_path, capsys):
    from nanocodegen.cli import main

    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / STATE_FILE).write_bytes(b"")  # looks resumable: the settings are checked first
    assert main(["train", *(a.format(out=tmp_path / "out", saved=tmp_path / "saved") for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
