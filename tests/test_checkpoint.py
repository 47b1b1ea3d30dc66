import json

import pytest
import torch

from nanocodegen.checkpoint import (
    CheckpointError,
    checkpoint_sha256,
    default_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from nanocodegen.model import ModelConfig, NanoCodeGenAgent
from nanocodegen.tokenizer import CodeTokenizer


@pytest.fixture
def saved(tmp_path):
    tok = CodeTokenizer.train(["result = sum([1, 2, 3])", "Return the sum of [1, 2, 3]"] * 10, vocab_size=280)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, max_seq_len=32,
                      retry_conditioning=False)
    torch.manual_seed(0)
    model = NanoCodeGenAgent.from_config(cfg)
    path = save_checkpoint(tmp_path / "ckpt", model, tok, {"prompt": {"feedback_budget": 8}})
    return path, model


def test_round_trip(saved):
    path, model = saved
    loaded, tok, config = load_checkpoint(path)
    x = torch.randint(0, model.vocab_size, (1, 8))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])
    assert loaded.lm_head.weight is loaded.token_embed.weight  # tying survives the round trip
    assert config["prompt"]["feedback_budget"] == 8 and tok.vocab_size == model.vocab_size
    assert len(checkpoint_sha256(path)) == 64


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_missing_file(saved):
    path, _ = saved
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="lacks tokenizer.json"):
        load_checkpoint(path)


def test_corrupt_weights(saved):
    path, _ = saved
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="weights are corrupt"):
        load_checkpoint(path)


def test_truncated_weights(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_config_that_does_not_match_the_weights(saved):
    path, _ = saved
    config = json.loads((path / "config.json").read_text())
    config["model"]["n_layers"] = 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


def test_bad_config_json(saved):
    path, _ = saved
    (path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_the_shipped_checkpoint_loads():
    model, tok, config = load_checkpoint(default_checkpoint())
    assert model.vocab_size == tok.vocab_size
    assert config["result"]["val_loss"] < 0.1
    assert config["command"].startswith("nanocodegen train")
