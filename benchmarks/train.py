"""Training throughput of our loop against nanoGPT's training step: same model, batches and data, one run.

    python benchmarks/train.py                                         # default preset, 60 steps per loop
    python benchmarks/train.py --preset smoke --train-tasks 300 --steps 10             # seconds
    python benchmarks/train.py --quality-steps 1000 --target 0.5       # also time to a val-loss target
    python benchmarks/train.py --json out.json

Loops, each fed the same global batches of our episodes (length-bucketed, right-padded) from the same
initial weights:

  ours       `nanocodegen.train.train_step` as `nanocodegen train` runs it: NanoCodeGenAgent, AdamW (fused
             on CUDA), autocast as --precision auto picks it (bf16 on CUDA and on CPUs with bf16 units),
             summed loss over the global batch's code-token count
  ours-fp32  the same step without autocast
  nanoGPT    karpathy/nanoGPT's published recipe (model.py, train.py), written out below, not vendored:
             its GPT at our size (d_model, heads, layers, context, vocab; biases on, like GPT-2; weights
             tied; F.scaled_dot_product_attention), `configure_optimizers` (AdamW, betas (0.9, 0.95),
             decay on 2-D parameters, fused on CUDA only) and its step (autocast on CUDA, nullcontext on
             CPU; loss / grad_accum per micro-batch; GradScaler for fp16; clip; step;
             zero_grad(set_to_none=True); loss.item() every step, its log_interval = 1)

nanoGPT's model starts from a copy of our initial weights, so both compute the same function and the
first step's losses must agree (checked). Throughput is real (non-pad) input tokens per second over
--steps timed steps after --warmup. The loops are interleaved step by step (step i of every loop runs
on batch i, back to back, in a rotating order), so bursts of load on a shared machine hit them alike;
reported: the median over steps of each loop's tokens/s, its total, and the median (and quartiles)
over steps of the paired speed ratio against nanoGPT. nanoGPT gets its batches as ready tensors; ours
pads inside its step, as in training.

--quality-steps N: every loop also trains a whole N-step schedule (warmup + cosine, as `nanocodegen
train`) on the same batches, with the val loss per code token on the val split every --eval-every
steps; reports the final val loss and the training seconds (evaluation excluded) until the val loss
first reaches --target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console

from nanocodegen import distributed
from nanocodegen.config import PRESETS, ModelConfig, TrainConfig, preset_configs
from nanocodegen.data import BatchStream, EpisodeStream, fixed_episodes, shard
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import IGNORE
from nanocodegen.train import (
    PAD_MULTIPLE,
    autocast_dtype,
    evaluate,
    lr_at,
    make_optimizer,
    pad_batch,
    prepare_data,
    train_step,
)

# --- nanoGPT, written out from its model.py ----------------------------------------------------------


@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's; torch's could not drop the bias when it was written)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)
        self.n_head, self.n_embd, self.dropout = c.n_head, c.n_embd, c.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(c.n_embd, c.bias), CausalSelfAttention(c)
        self.ln_2, self.mlp = LayerNorm(c.n_embd, c.bias), MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.block_size, c.n_embd),
            drop=nn.Dropout(c.dropout), h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            ln_f=LayerNorm(c.n_embd, c.bias),
        ))  # fmt: skip
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: only the last position's logits
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        extra = dict(fused=True) if device_type == "cuda" else dict()  # fused AdamW where available, on CUDA
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def gpt_from(ours: NanoCodeGenAgent) -> GPT:
    """nanoGPT's model at our model's size, holding a copy of our weights (the same function)."""
    c = ours.config
    gpt = GPT(GPTConfig(block_size=c.max_seq_len, vocab_size=c.vocab_size, n_layer=c.n_layers, n_head=c.n_heads,
                        n_embd=c.d_model, dropout=c.dropout, bias=True))
    renames = {"token_embed": "transformer.wte", "pos_embed": "transformer.wpe", "ln_f": "transformer.ln_f",
               "layers": "transformer.h", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
               "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"}
    state = {}
    for name, tensor in ours.state_dict().items():
        for old, new in renames.items():
            name = name.replace(old, new)
        state[name] = tensor.clone()
    gpt.load_state_dict(state)  # strict: every parameter has its counterpart
    return gpt.to(ours.token_embed.weight.device)


class NanoGPTStep:
    """nanoGPT's train.py training step for our batches (targets' -100 become its ignore index -1)."""

    def __init__(self, model: GPT, cfg: TrainConfig, device: torch.device, grad_accum: int):
        dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
        ptdtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.ctx = nullcontext() if device.type == "cpu" else torch.autocast(device_type=device.type, dtype=ptdtype)
        # nanoGPT's torch.cuda.amp.GradScaler(enabled=dtype == "float16") switches itself off without CUDA.
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16" and device.type == "cuda")
        self.model, self.grad_accum, self.grad_clip = model, grad_accum, cfg.grad_clip
        self.optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (0.9, 0.95), device.type)

    def __call__(self, micro: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for X, Y in micro:
            with self.ctx:
                _, loss = self.model(X, Y)
                loss = loss / self.grad_accum
            self.scaler.scale(loss).backward()
        if self.grad_clip != 0.0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item() * self.grad_accum


@torch.no_grad()
def evaluate_gpt(model: GPT, episodes, pad_id: int, batch_size: int = 64) -> float:
    """Mean cross-entropy per code token, as nanocodegen.train.evaluate computes it."""
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(episodes, key=lambda e: len(e[0]))
    for i in range(0, len(ordered), batch_size):
        x, y = pad_batch(ordered[i : i + batch_size], pad_id)
        device = model.lm_head.weight.device
        _, loss = model(x.to(device), y.masked_fill(y == IGNORE, -1).to(device))
        n = int((y != IGNORE).sum())
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


# --- the loops, side by side -------------------------------------------------------------------------


class Loop:
    """One training loop under test: `step(batch, lr)` trains on a global batch and returns its loss."""

    def __init__(self, name: str, init: NanoCodeGenAgent, cfg: TrainConfig, dist, pad_id: int, amp):
        self.name, self.cfg, self.dist, self.pad_id, self.amp = name, cfg, dist, pad_id, amp
        if name == "nanoGPT":
            self.model = gpt_from(init)
            self.nanogpt = NanoGPTStep(self.model, cfg, dist.device, cfg.grad_accum)
        else:
            self.model = NanoCodeGenAgent.from_config(init.config).to(dist.device)
            self.model.load_state_dict(init.state_dict())
            self.opt = make_optimizer(self.model, cfg)
        self.model.train()

    def step(self, batch, lr: float) -> float:
        if self.name == "nanoGPT":
            return self.nanogpt(batch.tensors, lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        micro = shard(batch, 0, 1, self.cfg.grad_accum)
        return train_step(self.model, self.opt, micro, self.pad_id, self.dist, self.amp, self.cfg.grad_clip)[0]

    def val_loss(self, episodes) -> float:
        if self.name == "nanoGPT":
            return evaluate_gpt(self.model, episodes, self.pad_id)
        return evaluate(self.model, episodes, self.pad_id)


class Batch(list):
    """A global batch of episodes, plus nanoGPT's ready (x, y) tensors of its micro-batches."""

    tensors: list[tuple[torch.Tensor, torch.Tensor]]


def make_batches(stream: BatchStream, n: int, cfg: TrainConfig, pad_id: int, device) -> list[Batch]:
    out = []
    for _ in range(n):
        batch = Batch(next(stream))
        padded = (pad_batch(mb, pad_id, multiple=PAD_MULTIPLE) for mb in shard(batch, 0, 1, cfg.grad_accum))
        batch.tensors = [(x.to(device), y.masked_fill(y == IGNORE, -1).to(device)) for x, y in padded]
        out.append(batch)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(loops: list[Loop], batches: list[Batch], warmup: int, cfg: TrainConfig) -> dict:
    """Step-by-step interleaving: step i of every loop runs on batch i, back to back in a rotating order,
    so a burst of load on a shared machine hits the loops alike. Per loop: the median over steps of
    tokens/s and the total; against nanoGPT: the median over steps of the paired time ratio."""
    times = {loop.name: [] for loop in loops}
    for i, batch in enumerate(batches):
        for k in range(len(loops)):
            loop = loops[(i + k) % len(loops)]
            sync(loop.dist.device)
            t0 = time.perf_counter()
            loop.step(batch, lr_at(i, cfg))
            sync(loop.dist.device)
            if i >= warmup:
                times[loop.name].append(time.perf_counter() - t0)
    tokens = [sum(len(x) for x, _ in batch) for batch in batches[warmup:]]
    out = {}
    for name, ts in times.items():
        out[name] = {"tokens_per_s_median": statistics.median(n / t for n, t in zip(tokens, ts, strict=True)),
                     "tokens_per_s_total": sum(tokens) / sum(ts), "ms_per_step_median": 1000 * statistics.median(ts)}
        if "nanoGPT" in times:
            ratios = [b / a for a, b in zip(ts, times["nanoGPT"], strict=True)]  # > 1: faster than nanoGPT
            out[name]["vs_nanoGPT_median"] = statistics.median(ratios)
            out[name]["vs_nanoGPT_quartiles"] = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios
    return out


def quality(loop: Loop, batches: list[Batch], cfg: TrainConfig, val, eval_every: int, target: float | None) -> dict:
    curve, train_seconds, reached = [], 0.0, None
    for step, batch in enumerate(batches):
        sync(loop.dist.device)
        t0 = time.perf_counter()
        loop.step(batch, lr_at(step, cfg))
        sync(loop.dist.device)
        train_seconds += time.perf_counter() - t0
        if (step + 1) % eval_every == 0 or step + 1 == len(batches):
            v = loop.val_loss(val)
            curve.append({"step": step + 1, "val_loss": round(v, 5), "train_seconds": round(train_seconds, 2)})
            if reached is None and target is not None and v <= target:
                reached = {"step": step + 1, "train_seconds": round(train_seconds, 2)}
    return {"final_val_loss": curve[-1]["val_loss"], "train_seconds": round(train_seconds, 2),
            "time_to_target": reached, "curve": curve}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", choices=tuple(PRESETS), help="model size and batch")
    parser.add_argument("--train-tasks", type=int, default=6000, help="training tasks prepared (data prep time)")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per loop; medians are over steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quality-steps", type=int, default=0, help="also train a whole schedule this long")
    parser.add_argument("--target", type=float, help="val loss whose time-to-reach is reported")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between val losses (quality run)")
    parser.add_argument("--loops", nargs="+", default=["ours", "ours-fp32", "nanoGPT"],
                        choices=("ours", "ours-fp32", "nanoGPT"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    model_cfg, cfg = preset_configs(args.preset, train_overrides={
        "train_tasks": args.train_tasks, "tokenizer_episodes": min(args.train_tasks, TrainConfig.tokenizer_episodes),
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "device": args.device})  # fmt: skip
    dist = distributed.Dist(device=distributed.choose_device(cfg.device))
    console = Console(stderr=True)
    load_before = os.getloadavg()
    data = prepare_data(cfg, dist, console)
    model_cfg = ModelConfig(**{**asdict(model_cfg), "vocab_size": data.tok.vocab_size})
    torch.manual_seed(cfg.seed)
    init = NanoCodeGenAgent.from_config(model_cfg).to(dist.device)
    amp = autocast_dtype(cfg.precision, dist.device)
    amps = {"ours": amp, "ours-fp32": None, "nanoGPT": None}
    make_loop = lambda name: Loop(name, init, cfg, dist, data.tok.pad_id, amps[name])
    stream = BatchStream(EpisodeStream(data.train, cfg.seed, cfg.repair_fraction, model_cfg.max_seq_len),
                         cfg.batch_size, cfg.seed)
    batches = make_batches(stream, args.warmup + args.steps, cfg, data.tok.pad_id, dist.device)
    mean_tokens = statistics.mean(sum(len(x) for x, _ in b) for b in batches)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, device {dist.device}, ours autocast {amp}; load average "
          f"{load_before[0]:.1f} before data prep")
    print(f"preset {args.preset}: {init.num_params() / 1e6:.2f}M params, batch {cfg.batch_size} episodes "
          f"(~{mean_tokens:.0f} real tokens), grad_accum {cfg.grad_accum}")

    # The same function: both models' first-step losses on the same batch agree (fp32, before any update).
    first = {name: make_loop(name).step(batches[0], 0.0) for name in ("ours-fp32", "nanoGPT")}
    assert math.isclose(first["ours-fp32"], first["nanoGPT"], rel_tol=1e-4), first

    summary = throughput([make_loop(name) for name in args.loops], batches, args.warmup, cfg)
    load_after = os.getloadavg()
    print(f"\n{'loop':<10} {'tokens/s median':>16} {'total':>8} {'ms/step':>8} {'vs nanoGPT (median, quartiles)':>32}")
    for name, r in summary.items():
        ratio = "-"
        if "vs_nanoGPT_median" in r:
            q = r["vs_nanoGPT_quartiles"]
            ratio = f"{r['vs_nanoGPT_median']:.2f}x ({q[0]:.2f}-{q[-1]:.2f})"
        print(f"{name:<10} {r['tokens_per_s_median']:>16.0f} {r['tokens_per_s_total']:>8.0f} "
              f"{r['ms_per_step_median']:>8.1f} {ratio:>32}")
    print(f"load average {load_after[0]:.1f} after (1-minute; {os.cpu_count()} CPUs)")

    results = {"argv": sys.argv, "preset": args.preset, "model": asdict(model_cfg), "train": asdict(cfg),
               "device": str(dist.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "autocast": str(amp), "mean_real_tokens_per_batch": mean_tokens, "first_step_loss": first,
               "load_average": {"before": load_before, "after": load_after}, "throughput": summary}
    if args.quality_steps:
        qcfg = replace(cfg, max_steps=args.quality_steps)
        stream = BatchStream(EpisodeStream(data.train, cfg.seed, cfg.repair_fraction, model_cfg.max_seq_len),
                             cfg.batch_size, cfg.seed)
        qbatches = make_batches(stream, args.quality_steps, cfg, data.tok.pad_id, dist.device)
        val = fixed_episodes(data.val, cfg.seed, model_cfg.max_seq_len)
        results["quality"] = {}
        print(f"\nquality: {args.quality_steps}-step schedule, val loss every {args.eval_every} steps, "
              f"target {args.target}")
        for name in args.loops:
            q = quality(make_loop(name), qbatches, qcfg, val, args.eval_every, args.target)
            results["quality"][name] = q
            hit = q["time_to_target"]
            print(f"{name:<10} final val loss {q['final_val_loss']:.4f}, {q['train_seconds']:.0f}s training; "
                  + (f"target reached at step {hit['step']} after {hit['train_seconds']:.0f}s" if hit else
                     "target not reached"))
        results["load_average"]["after_quality"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
