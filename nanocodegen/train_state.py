"""What a resumable training run saves, and how `--resume` finds the run's settings.

    CKPT/train_state.pt   {"step", "model", "optimizer", "batches" (the data stream's position),
                           "rng" (every rank's torch/python/CUDA RNG), "progress", "feedback" (the verified
                           messages, so a resume neither re-verifies nor risks a different verdict),
                           "data_sha256", "world_size"}

Written by rank 0 every --save-interval steps and at --stop-at, atomically; removed when the run
completes. The folder's config.json holds the settings a resume continues with.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from nanocodegen.checkpoint import CONFIG_FILE, CheckpointError
from nanocodegen.config import ModelConfig, TrainConfig

STATE_FILE = "train_state.pt"
# Settings a resumed run may change: none of them changes what is computed.
RESUME_MAY_CHANGE = ("stop_at", "save_interval", "data_workers")


@dataclass
class RunProgress:
    """Where a run stands after `step` optimizer steps."""

    step: int = 0
    tokens: int = 0  # input tokens trained on, pads not counted
    best_val: float = float("inf")
    val_loss: float = float("nan")  # the latest validation loss
    seconds: float = 0.0  # wall-clock seconds of training so far, over every invocation


def save_state(out: Path, state: dict) -> None:
    """Write train_state.pt atomically: a run killed mid-write keeps the previous state."""
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


def load_state(out: Path) -> dict:
    """train_state.pt with every tensor on the CPU (each rank moves what it needs to its device)."""
    try:
        return torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{out / STATE_FILE} cannot be read ({str(e).splitlines()[0]}); it is corrupt "
                              "or from another version — start the run again") from None


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_configs(path: str | Path, **changes) -> tuple[ModelConfig, TrainConfig, dict]:
    """The settings of the interrupted run in `path` (with the RESUME_MAY_CHANGE fields in `changes`
    applied) and its config.json; raises CheckpointError when there is nothing to resume."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{path} has no {STATE_FILE}: the run there completed (nothing to resume) or never saved a "
            "resumable checkpoint (see --save-interval and --stop-at)"
        )
    refused = sorted(k for k, v in changes.items() if v is not None and k not in RESUME_MAY_CHANGE)
    if refused:
        flags = lambda names: ", ".join("--" + k.replace("_", "-") for k in names)
        raise ValueError(
            f"--resume continues a run with its saved settings; drop {flags(refused)} "
            f"(only {flags(RESUME_MAY_CHANGE)} may change)"
        )
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
        known = {f.name for f in fields(TrainConfig)}
        saved = {k: v for k, v in meta["train"].items() if k in known}
        model_cfg = ModelConfig(**meta["model"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is missing or unreadable ({e}); cannot resume") from None
    saved["stop_at"] = 0  # the saved run's stop was for its own invocation
    saved.update({k: v for k, v in changes.items() if v is not None})
    saved["out"] = str(path)
    return model_cfg, TrainConfig(**saved), meta
