"""Train the code model from scratch.

    nanocodegen train                       # the default model, as shipped (about 15 min on 2 cores)
    nanocodegen train --preset smoke --max-steps 20 --out /tmp/ckpt   # seconds, for a check

Steps: draw training tasks from the synthetic families' train split, corrupt their solutions and run
every wrong attempt through the sandboxed verifier for its real message, train the BPE tokenizer on
that text, then train the transformer with cross-entropy on the code tokens only (AdamW, warmup +
cosine decay, gradient clipping, periodic validation loss on the val split). Writes a checkpoint
folder (see checkpoint.py) whose config.json records the exact command and settings.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nanocodegen import families
from nanocodegen.checkpoint import LOG_FILE, save_checkpoint
from nanocodegen.config import MODEL_PRESETS, ModelConfig, TrainConfig
from nanocodegen.data import (
    CANDIDATES_PER_TASK,
    TokenizedTask,
    episode_stream,
    episode_text,
    fixed_episodes,
    tokenize_tasks,
    verify_candidates,
)
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import IGNORE
from nanocodegen.tasks import load_suite
from nanocodegen.tokenizer import CodeTokenizer


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)


def pad_batch(episodes: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (inputs, targets) pairs to the longest: (B, T) inputs, (B, T) targets (-100 on pads)."""
    T = max(len(x) for x, _ in episodes)
    x = torch.full((len(episodes), T), pad_id, dtype=torch.long)
    y = torch.full((len(episodes), T), IGNORE, dtype=torch.long)
    for i, (inp, tgt) in enumerate(episodes):
        x[i, : len(inp)] = torch.tensor(inp)
        y[i, : len(tgt)] = torch.tensor(tgt)
    return x, y


def batches(stream, batch_size: int, pad_id: int, seed: int, bucket: int = 16):
    """Endless (x, y) batches. Episodes are grouped by length within windows of `bucket` batches so
    little compute goes to padding; the batch order within a window is shuffled."""
    rng = random.Random(seed)
    while True:
        window = [next(stream) for _ in range(batch_size * bucket)]
        window.sort(key=lambda e: len(e[0]))
        group = [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        rng.shuffle(group)
        for episodes in group:
            yield pad_batch(episodes, pad_id)


@torch.no_grad()
def evaluate(model: NanoCodeGenAgent, episodes, pad_id: int, batch_size: int = 64) -> float:
    """Mean cross-entropy per code token over fixed validation episodes."""
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(episodes, key=lambda e: len(e[0]))
    for i in range(0, len(ordered), batch_size):
        x, y = pad_batch(ordered[i : i + batch_size], pad_id)
        _, loss = model(x, y)
        n = int((y != IGNORE).sum())
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


def prepare_data(cfg: TrainConfig, console: Console) -> tuple[CodeTokenizer, list[TokenizedTask], list[TokenizedTask]]:
    """Tasks -> verified failures -> tokenizer -> tokenized tasks, for the train and val splits."""
    from nanocodegen.verifier import CodeVerifier

    train_tasks = list(itertools.islice(families.iter_train_tasks(cfg.seed), cfg.train_tasks))
    val_tasks = load_suite("synthetic-val")
    # The programs are the project's own (corruptions of reference solutions), not a model's: they may run
    # where the sandbox lacks a layer.
    with CodeVerifier(workers=cfg.data_workers, allow_weak_isolation=True) as verifier, progress_bar(console) as bar:
        every = train_tasks + val_tasks
        total = sum(len(t.distractors) for t in every) + CANDIDATES_PER_TASK * len(every)
        job = bar.add_task("verifying wrong attempts", total=total, info="")
        advance = lambda n: bar.advance(job, n)
        train = verify_candidates(train_tasks, verifier, cfg.seed, cfg.data_workers, advance)
        val = verify_candidates(val_tasks, verifier, cfg.seed + 1, cfg.data_workers, advance)
        bar.update(job, completed=total)
    texts = [episode_text(d.task, d.failures) for d in train[: cfg.tokenizer_episodes]]
    tok = CodeTokenizer.train(texts, vocab_size=cfg.vocab_size)
    return tok, tokenize_tasks(train, tok, cfg.feedback_budget), tokenize_tasks(val, tok, cfg.feedback_budget)


def train(model_cfg: ModelConfig, cfg: TrainConfig, command: str = "", console: Console | None = None) -> Path:
    """Train a model from scratch and write its checkpoint folder to cfg.out; returns the folder."""
    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    tok, train_data, val_data = prepare_data(cfg, console)
    data_seconds = time.perf_counter() - t_start
    model_cfg = ModelConfig(**{**asdict(model_cfg), "vocab_size": tok.vocab_size})
    model = NanoCodeGenAgent.from_config(model_cfg)
    device = torch.device("cpu")
    amp = autocast_dtype(cfg.precision, device)
    val_episodes = fixed_episodes(val_data, cfg.seed, model_cfg.max_seq_len)
    longest = max(len(x) for x, _ in val_episodes)
    console.print(
        f"model {model.num_params() / 1e6:.2f}M params, vocab {tok.vocab_size}; {len(train_data)} train tasks, "
        f"{len(val_episodes)} val episodes (longest {longest} tokens); data ready in {data_seconds:.0f}s; "
        f"autocast {amp or 'off'}"
    )

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    stream = episode_stream(train_data, cfg.seed, cfg.repair_fraction, model_cfg.max_seq_len)
    data = batches(stream, cfg.batch_size, tok.pad_id, cfg.seed)
    log_path = out / LOG_FILE
    log = log_path.open("w")
    best_val, val_loss, tokens_seen = float("inf"), float("nan"), 0
    model.train()
    with progress_bar(console) as bar:
        job = bar.add_task("training", total=cfg.max_steps, info="")
        for step in range(cfg.max_steps):
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = next(data)
            tokens_seen += int((x != tok.pad_id).sum())
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                _, loss = model(x, y)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            record = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr, "tokens": tokens_seen,
                      "seconds": round(time.perf_counter() - t_start, 2)}
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps:
                val_loss = evaluate(model, val_episodes, tok.pad_id)
                best_val = min(best_val, val_loss)
                record["val_loss"] = round(val_loss, 5)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(job, advance=1, info=f"loss {loss.item():.3f} val {val_loss:.3f}")
    log.close()
    seconds = time.perf_counter() - t_start
    meta = {
        "train": asdict(cfg),
        "prompt": {"feedback_budget": cfg.feedback_budget},
        "command": command,
        "result": {"val_loss": round(val_loss, 5), "best_val_loss": round(best_val, 5), "steps": cfg.max_steps,
                   "tokens": tokens_seen, "train_seconds": round(seconds, 1),
                   "data_seconds": round(data_seconds, 1), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "autocast": str(amp) if amp else None},
    }
    save_checkpoint(out, model, tok, meta)
    console.print(f"val loss {val_loss:.4f} (code tokens) after {cfg.max_steps} steps, {seconds:.0f}s; wrote {out}")
    return out


def model_config_for(preset: str, **overrides) -> ModelConfig:
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


def command_line() -> str:
    return shlex.join(["nanocodegen", *sys.argv[1:]])
