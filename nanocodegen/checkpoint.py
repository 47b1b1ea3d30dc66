"""Checkpoints are folders: weights in safetensors, a JSON config, the tokenizer, the training log.

    CKPT/model.safetensors   weights (tied embeddings stored once)
    CKPT/config.json         {"format", "model": ModelConfig, "train": TrainConfig, "command", ...}
    CKPT/tokenizer.json      the byte-level BPE tokenizer
    CKPT/train_log.jsonl     one JSON record per logged step (the loss curve)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from nanocodegen.model import ModelConfig, NanoCodeGenAgent
from nanocodegen.tokenizer import TOKENIZER_FILE, CodeTokenizer

FORMAT = "nanocodegen-checkpoint/1"
WEIGHTS_FILE, CONFIG_FILE, LOG_FILE = "model.safetensors", "config.json", "train_log.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or corrupt; the message says which and what to do."""


def default_checkpoint() -> Path:
    """The checkpoint shipped inside the package."""
    return Path(str(resources.files("nanocodegen") / "checkpoints" / "default"))


def save_checkpoint(
    path: str | Path, model: NanoCodeGenAgent, tok: CodeTokenizer, meta: dict | None = None
) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / WEIGHTS_FILE))
    config = {"format": FORMAT, "model": model.config_dict(), **(meta or {})}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    tok.save(path / TOKENIZER_FILE)
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist or is not a folder; pass --checkpoint DIR of a folder "
            "written by `nanocodegen train`, or omit it to use the shipped model"
        )
    for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"checkpoint {path} lacks {name}; it is incomplete — retrain with `nanocodegen train` "
                "or restore the folder"
            )
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE} is not a {FORMAT} config; the checkpoint is corrupt")
    return config


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[NanoCodeGenAgent, CodeTokenizer, dict]:
    """Load (model in eval mode, tokenizer, config dict), or raise CheckpointError."""
    path = Path(path)
    config = read_config(path)
    known = {f.name for f in fields(ModelConfig)}
    try:
        model_config = ModelConfig(**{k: v for k, v in config["model"].items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: bad model config ({e})") from None
    try:
        tok = CodeTokenizer.load(path / TOKENIZER_FILE)
    except ValueError as e:
        raise CheckpointError(f"{e}; the checkpoint is corrupt") from None
    if tok.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"checkpoint {path}: tokenizer has {tok.vocab_size} tokens but the model expects "
            f"{model_config.vocab_size}; the tokenizer and weights come from different runs"
        )
    model = NanoCodeGenAgent.from_config(model_config)
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(
            f"{path / WEIGHTS_FILE} could not be read ({str(e).splitlines()[0]}); the weights are corrupt "
            "— retrain or restore the folder"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path / WEIGHTS_FILE} does not match its config (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); the checkpoint is corrupt"
        )
    return model.to(device).eval(), tok, config


def read_train_log(path: str | Path) -> list[dict]:
    log = Path(path) / LOG_FILE
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of the weights file: what identifies a checkpoint in results."""
    return file_sha256(Path(path) / WEIGHTS_FILE)
