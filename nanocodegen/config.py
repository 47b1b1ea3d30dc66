"""Typed settings. Each default is stated once, here; CLI flags are derived from these fields.

`ModelConfig` lives in model.py (the model file owns its config); it is re-exported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field

from nanocodegen.model import ModelConfig

__all__ = ["ModelConfig", "TrainConfig", "AgentConfig", "LoadGenConfig", "MODEL_PRESETS", "add_dataclass_args",
           "from_args"]


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    max_steps: int = _f(4000, "optimizer steps")
    train_tasks: int = _f(30000, "distinct training tasks drawn from the families' train split")
    batch_size: int = _f(48, "episodes per optimizer step")
    lr: float = _f(2e-3, "peak learning rate (AdamW)")
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _f(200, "linear warmup steps")
    weight_decay: float = _f(0.05, "AdamW weight decay on matrices")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off)")
    eval_interval: int = _f(250, "steps between validation-loss evaluations")
    eval_episodes: int = _f(512, "validation episodes per evaluation")
    seed: int = _f(1337, "seed for data, initialisation and dropout")
    vocab_size: int = _f(1024, "BPE vocabulary size, special tokens included")
    tokenizer_episodes: int = _f(20000, "episodes of text the tokenizer is trained on")
    repair_fraction: float = _f(0.6, "share of training episodes that show failed attempts before the solution")
    feedback_budget: int = _f(32, "feedback tokens kept per failed attempt (stored in the checkpoint)")
    precision: str = _f("auto", "autocast dtype: bf16, fp32, or auto (bf16 where the hardware has it)",
                         choices=("auto", "bf16", "fp32"))
    data_workers: int = _f(2, "sandbox workers that produce the real feedback for repair episodes")
    out: str = _f("runs/train", "checkpoint folder to write")


@dataclass
class AgentConfig:
    max_attempts: int = _f(5, "attempts per task before giving up")
    max_new_tokens: int = _f(96, "tokens generated per attempt at most")
    temperature: float = _f(0.0, "sampling temperature (0: greedy)")
    top_k: int = _f(0, "sample from the k most likely tokens (0: all)")
    timeout_ms: int = _f(100, "per-attempt execution time limit in the sandbox")
    kv_cache: str = _f("prefix", "KV-cache mode", choices=("none", "attempt", "prefix"))
    withhold_feedback: bool = _f(False, "ablation: retry without showing the verifier's message")
    seed: int = _f(0, "sampling seed")


@dataclass
class LoadGenConfig:
    """How `nanocodegen loadgen` drives MLPerf LoadGen. Settings are layered: LoadGen's mlperf.conf, then
    this workload's defaults (harness.py), then --quick, then --user-conf, then the flags below."""

    scenario: str = _f("SingleStream", "LoadGen scenario", choices=("SingleStream", "Offline", "Server"))
    mode: str = _f("performance", "performance: timing; accuracy: every sample once, scored",
                   choices=("performance", "accuracy"))
    quick: bool = _f(False, "short settings (well under 2 minutes on 2 cores; VALID for SingleStream and Offline)")
    user_conf: str | None = _f(None, "a LoadGen user.conf applied over the defaults (keys nanocodegen.SCENARIO.KEY)")
    target_qps: float | None = _f(None, "Server: queries per second to issue; Offline: expected throughput; "
                                        "SingleStream: 1 / expected latency")
    min_duration_ms: int | None = _f(None, "minimum test duration in ms")
    min_query_count: int | None = _f(None, "minimum number of queries")
    warmup: int = _f(8, "episodes run before the test, to warm up and to measure throughput for the defaults")


# Model sizes. "sketch" is the original sketch's model; "default" is the shipped checkpoint's shape.
MODEL_PRESETS: dict[str, dict] = {
    "sketch": {},
    "smoke": dict(d_model=32, n_heads=2, n_layers=1, max_seq_len=256, retry_conditioning=False),
    "default": dict(d_model=128, n_heads=4, n_layers=4, max_seq_len=384, retry_conditioning=False),
}


def _flag_type(tp):
    """The argparse type for a field annotation (annotations are strings under `from __future__`)."""
    if isinstance(tp, str) and tp.endswith(" | None"):
        tp = tp[: -len(" | None")]
    tp = {"int": int, "float": float, "str": str, "bool": bool}.get(tp, tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one --flag per dataclass field, with the field's default and help."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _flag_type(f.type)
        help_text = f.metadata.get("help", "")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {f.default})")
        else:
            parser.add_argument(flag, type=tp, default=None, choices=f.metadata.get("choices"),
                                metavar=f.name.upper(), help=f"{help_text} (default: {f.default})")


def from_args(cls, args: argparse.Namespace, **overrides):
    """Build `cls` from parsed flags: flags left unset keep the dataclass defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if getattr(args, f.name, None) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
