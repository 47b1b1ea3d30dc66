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

__all__ = ["ModelConfig", "TrainConfig", "AgentConfig", "LoadGenConfig", "Preset", "PRESETS", "MODEL_PRESETS",
           "preset_configs", "add_dataclass_args", "from_args"]


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """One training run. These defaults are the `default` preset, which trained the shipped model;
    `PRESETS` below states what the other presets change."""

    max_steps: int = _f(8000, "optimizer steps")
    train_tasks: int = _f(30000, "distinct training tasks drawn from the families' train split")
    batch_size: int = _f(48, "episodes per optimizer step, over all processes and micro-batches")
    grad_accum: int = _f(1, "micro-batches per process per optimizer step (gradient accumulation)")
    lr: float = _f(2e-3, "peak learning rate (AdamW)")
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _f(200, "linear warmup steps")
    weight_decay: float = _f(0.05, "AdamW weight decay on matrices")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off)")
    eval_interval: int = _f(250, "steps between validation-loss evaluations")
    val_tasks: int = _f(0, "tasks of the val split the validation loss is measured on (0: all)")
    seed: int = _f(1337, "seed for data, initialisation and dropout")
    vocab_size: int = _f(1024, "BPE vocabulary size, special tokens included")
    tokenizer_episodes: int = _f(20000, "episodes of text the tokenizer is trained on")
    repair_fraction: float = _f(0.6, "share of training episodes that show failed attempts before the solution")
    feedback_budget: int = _f(32, "feedback tokens kept per failed attempt (stored in the checkpoint)")
    precision: str = _f("auto", "autocast dtype: bf16, fp32, or auto (bf16 on CUDA and on CPUs with bf16 units)",
                        choices=("auto", "bf16", "fp32"))
    device: str = _f("auto", "where to train: auto (CUDA if there is a GPU), cpu or cuda",
                     choices=("auto", "cpu", "cuda"))
    data_workers: int = _f(2, "sandbox workers per machine producing the repair episodes' real feedback, "
                              "shared among its processes (0: one per CPU core)")
    save_interval: int = _f(1000, "steps between resumable checkpoints (0: only at the end)")
    stop_at: int = _f(0, "end this invocation after this step with a resumable checkpoint (0: run to max-steps)")
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
    batch: int = _f(16, "Offline: episodes run at once by the batched agents (1: one after another); "
                        "SingleStream and Server run one episode at a time")
    threads: int = _f(1, "torch intra-op threads for the model (1 leaves the other core to the sandbox)")
    compile: bool = _f(False, "torch.compile the cached decode step and padded prefill, as bench --compile "
                              "(compiled before the test)")
    precision: str = _f("fp32", "dtype of the cached steps' matrix products and KV cache, as bench --precision",
                        choices=("fp32", "bf16"))


@dataclass(frozen=True)
class Preset:
    """A whole run: the model's shape and the training settings that differ from `TrainConfig`'s defaults."""

    help: str
    model: dict
    train: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "the shipped model (1.0M parameters, 8000 steps, ~31M tokens): 47 min on 2 shared CPU cores",
        model=dict(d_model=128, n_heads=4, n_layers=4, max_seq_len=384, retry_conditioning=False),
    ),
    "smoke": Preset(
        "seconds on a CPU, for tests and quick checks",
        model=dict(d_model=32, n_heads=2, n_layers=1, max_seq_len=256, retry_conditioning=False),
        train=dict(max_steps=20, train_tasks=300, val_tasks=64, batch_size=16, warmup_steps=5, lr=3e-3,
                   eval_interval=10, tokenizer_episodes=300, vocab_size=400, data_workers=1, save_interval=0,
                   precision="fp32"),  # bf16 autocast measured 2x slower than fp32 at this size on CPU
    ),
    "gpu": Preset(
        "a 15M-parameter model sized for one GPU (batch 256, ~120M tokens); data prep wants many CPU cores",
        model=dict(d_model=384, n_heads=6, n_layers=8, max_seq_len=512, retry_conditioning=False),
        train=dict(max_steps=6000, train_tasks=100000, batch_size=256, lr=1e-3, warmup_steps=300,
                   eval_interval=500, vocab_size=2048, tokenizer_episodes=50000, data_workers=0),
    ),
    "sketch": Preset("the original sketch's model shape (retry conditioning, 256 positions), default training",
                     model={}),
}
# The model shape of each preset (older name, kept for callers that only want the shape).
MODEL_PRESETS: dict[str, dict] = {name: p.model for name, p in PRESETS.items()}


def preset_configs(
    preset: str, model_overrides: dict | None = None, train_overrides: dict | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """A preset's model and training settings; overrides whose value is None are ignored."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    model = {**chosen.model, **{k: v for k, v in (model_overrides or {}).items() if v is not None}}
    train = {**chosen.train, **{k: v for k, v in (train_overrides or {}).items() if v is not None}}
    return ModelConfig(**model), TrainConfig(**train)


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
