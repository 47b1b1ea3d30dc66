"""Train the code model from scratch, on one process or many.

    nanocodegen train                                    # the default model, as shipped (47 min on 2 shared cores)
    nanocodegen train --preset smoke --out /tmp/ckpt     # seconds, for a check
    torchrun --standalone --nproc_per_node=2 -m nanocodegen train --preset smoke --out /tmp/ckpt
    nanocodegen train --resume runs/train                # continue an interrupted run where it stopped

Steps: draw training tasks from the synthetic families' train split, corrupt their solutions and run
every wrong attempt through the sandboxed verifier for its real message, train the BPE tokenizer on
that text, then train the transformer with cross-entropy on the code tokens only (AdamW, warmup +
cosine decay, gradient clipping, periodic validation loss on the val split). Writes a checkpoint
folder (see checkpoint.py) whose config.json records the exact command and settings, plus
train_state.pt (see train_state.py) every --save-interval steps until the run completes, for --resume.

Several processes (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE; see distributed.py) train one model.
Each verifies every W-th wrong attempt and all share the verdicts; rank 0 trains the tokenizer and sends
it to the others. Every rank draws the same global batches and trains on its share of each (episodes
rank, rank + W, ...), and the loss is normalised by the global batch's code tokens, so W processes
compute the update one process would, sooner. Logging, evaluation and checkpoints happen on rank 0.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tokenizers import Tokenizer
from torch.nn.parallel import DistributedDataParallel

from nanocodegen import distributed, families
from nanocodegen.checkpoint import CONFIG_FILE, LOG_FILE, CheckpointError, save_checkpoint
from nanocodegen.config import ModelConfig, TrainConfig
from nanocodegen.data import (
    BatchStream,
    Episode,
    EpisodeStream,
    TokenizedTask,
    candidate_jobs,
    check_jobs,
    collect_failures,
    episode_text,
    fixed_episodes,
    shard,
    tokenize_tasks,
)
from nanocodegen.distributed import Dist
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import IGNORE
from nanocodegen.tasks import load_suite
from nanocodegen.tokenizer import CodeTokenizer
from nanocodegen.train_state import STATE_FILE, RunProgress, load_state, rng_state, save_state, set_rng_state


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


PAD_MULTIPLE = 16  # few distinct sequence lengths keep the CPU kernels' caches (and memory) small


def pad_batch(
    episodes: list[Episode], pad_id: int, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (inputs, targets) pairs to the longest, rounded up to `multiple`: (B, T) inputs and
    (B, T) targets (-100 on pads). Few distinct T keep the CPU kernels' caches (and memory) small."""
    T = -(-max(len(x) for x, _ in episodes) // multiple) * multiple
    x = torch.full((len(episodes), T), pad_id, dtype=torch.long)
    y = torch.full((len(episodes), T), IGNORE, dtype=torch.long)
    for i, (inp, tgt) in enumerate(episodes):
        x[i, : len(inp)] = torch.tensor(inp)
        y[i, : len(tgt)] = torch.tensor(tgt)
    return x, y


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm gains); fused on CUDA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    on_cuda = decay[0].device.type == "cuda"
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=on_cuda or None,
    )


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    micro: list[list[Episode]],
    pad_id: int,
    dist: Dist,
    amp: torch.dtype | None,
    grad_clip: float,
) -> tuple[float, int]:
    """One optimizer step over this rank's micro-batches of episodes; `model` may be wrapped in
    DistributedDataParallel. Returns (the global batch's mean loss per code token, its input tokens):
    the numbers one process would see.

    Each micro-batch's summed loss is divided by the global batch's code-token count (times W, because
    DDP averages gradients over ranks): the gradient is that of the mean over every code token of the
    global batch, however the batch is split over ranks and micro-batches."""
    padded = (pad_batch(mb, pad_id, multiple=PAD_MULTIPLE) for mb in micro)
    batches = [tuple(t.to(dist.device, non_blocking=True) for t in xy) for xy in padded]
    counts = torch.tensor([sum(int((y != IGNORE).sum()) for _, y in batches),  # code tokens (loss-bearing)
                           sum(len(x) for mb in micro for x, _ in mb)],  # input tokens, pads not counted
                          device=dist.device)
    code_tokens, input_tokens = distributed.all_reduce_sum(counts, dist)
    scale = dist.world_size / code_tokens  # 0-dim float32 tensor: no host sync on CUDA
    loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    for k, (x, y) in enumerate(batches):  # x, y: (B, T)
        # Gradients are all-reduced once, during the last micro-batch's backward.
        syncing = not dist.enabled or k == len(batches) - 1
        with nullcontext() if syncing else model.no_sync():
            with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits, _ = model(x)  # (B, T, vocab)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE,
                                       reduction="sum")
            (loss * scale).backward()
        loss_sum += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mean = distributed.all_reduce_sum(loss_sum, dist) / code_tokens
    return mean.item(), int(input_tokens)


@torch.no_grad()
def evaluate(model: NanoCodeGenAgent, episodes: list[Episode], pad_id: int, batch_size: int = 64) -> float:
    """Mean cross-entropy per code token over fixed validation episodes (fp32)."""
    model.eval()
    device = model.token_embed.weight.device
    total, count = 0.0, 0
    ordered = sorted(episodes, key=lambda e: len(e[0]))
    for i in range(0, len(ordered), batch_size):
        x, y = pad_batch(ordered[i : i + batch_size], pad_id)
        _, loss = model(x.to(device), y.to(device))
        n = int((y != IGNORE).sum())
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


def data_workers(cfg: TrainConfig, dist: Dist) -> int:
    """This process's share of its machine's sandbox workers."""
    total = cfg.data_workers or len(os.sched_getaffinity(0))
    return max(1, total // dist.local_world_size)


@dataclass
class PreparedData:
    tok: CodeTokenizer
    train: list[TokenizedTask]
    val: list[TokenizedTask]  # on rank 0 only
    feedback: list[str | None]  # the verifier's message for every candidate (None: it was correct)
    sha256: str  # of the candidates and their messages: what identifies the data


def prepare_data(
    cfg: TrainConfig,
    dist: Dist,
    console: Console,
    tok: CodeTokenizer | None = None,
    feedback: list[str | None] | None = None,
) -> PreparedData:
    """Tasks -> verified failures -> tokenizer -> tokenized train and val tasks, the same on every rank.

    Every rank draws the same candidates; each verifies every W-th one and the verdicts are gathered,
    so the data are exactly what one process makes. Rank 0 trains the tokenizer and sends it to the
    others: identical on all ranks by construction, rather than by trusting the BPE trainer to break
    ties the same way in every process. A resumed run brings its saved `feedback` and tokenizer
    (`tok`, on rank 0) instead of verifying and training again.
    """
    from nanocodegen.verifier import CodeVerifier

    train_tasks = list(itertools.islice(families.iter_train_tasks(cfg.seed), cfg.train_tasks))
    val_tasks = load_suite("synthetic-val")[: cfg.val_tasks or None]
    every = train_tasks + val_tasks
    jobs = candidate_jobs(train_tasks, cfg.seed)
    jobs += [(len(train_tasks) + i, code) for i, code in candidate_jobs(val_tasks, cfg.seed + 1)]
    if feedback is None:
        mine = jobs[dist.rank :: dist.world_size]
        workers = data_workers(cfg, dist)
        share = f", 1/{dist.world_size} of {len(jobs)}" if dist.enabled else ""
        # The programs are the project's own (corruptions of reference solutions), not a model's: they may
        # run where the sandbox lacks a layer.
        with CodeVerifier(workers=workers, allow_weak_isolation=True) as verifier, progress_bar(console) as bar:
            job = bar.add_task("verifying wrong attempts", total=len(mine), info=f"{workers} sandbox workers{share}")
            verdicts = check_jobs(mine, every, verifier, workers, lambda n: bar.advance(job, n))
        feedback = [None] * len(jobs)
        for rank, part in enumerate(distributed.all_gather(verdicts, dist)):
            feedback[rank :: dist.world_size] = part
    elif len(feedback) != len(jobs):
        raise CheckpointError(f"the saved run verified {len(feedback)} candidates but this version draws "
                              f"{len(jobs)}; resume with the version of nanocodegen that started the run")
    verified = collect_failures(every, jobs, feedback)
    train, val = verified[: len(train_tasks)], verified[len(train_tasks) :]
    if dist.is_main and tok is None:
        texts = [episode_text(d.task, d.failures) for d in train[: cfg.tokenizer_episodes]]
        tok = CodeTokenizer.train(texts, vocab_size=cfg.vocab_size)
    if dist.enabled:
        tok = CodeTokenizer(Tokenizer.from_str(distributed.broadcast(tok.tokenizer.to_str() if tok else None, dist)))
    return PreparedData(
        tok=tok,
        train=tokenize_tasks(train, tok, cfg.feedback_budget),
        val=tokenize_tasks(val, tok, cfg.feedback_budget) if dist.is_main else [],
        feedback=feedback,
        sha256=hashlib.sha256(json.dumps([jobs, feedback]).encode()).hexdigest(),
    )


def check_settings(cfg: TrainConfig, dist: Dist) -> None:
    """Refuse settings that cannot run, naming the fix."""
    for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "train_tasks"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("save_interval", "stop_at", "val_tasks", "data_workers"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more")
    if cfg.stop_at > cfg.max_steps:
        raise ValueError(f"--stop-at {cfg.stop_at} is past --max-steps {cfg.max_steps}; lower it or drop it")
    if cfg.batch_size < dist.world_size * cfg.grad_accum:
        raise ValueError(
            f"--batch-size {cfg.batch_size} leaves empty micro-batches over {dist.world_size} process(es) x "
            f"--grad-accum {cfg.grad_accum}; raise --batch-size or lower --grad-accum"
        )


def train(
    model_cfg: ModelConfig, cfg: TrainConfig, command: str = "", console: Console | None = None, resume: bool = False
) -> Path:
    """Train a model and write its checkpoint folder to cfg.out; returns the folder.

    Runs on one process, or as one of torchrun's processes (see the module docstring). `resume=True`
    continues the run saved in cfg.out (see `resume_configs` for its settings)."""
    dist = distributed.setup(cfg.device)
    try:
        return _train(model_cfg, cfg, command, console or Console(stderr=True), resume, dist)
    finally:
        distributed.shutdown(dist)


def _train(model_cfg: ModelConfig, cfg: TrainConfig, command: str, console: Console, resume: bool, dist: Dist) -> Path:
    t_start = time.perf_counter()
    check_settings(cfg, dist)
    if not dist.is_main:
        console = Console(quiet=True)
    out = Path(cfg.out)
    # On resume rank 0 reads the folder and sends the state to the others: only it needs the folder.
    state = distributed.broadcast(load_state(out) if resume and dist.is_main else None, dist)
    # Same seed on every rank: the same initial weights (DDP also copies rank 0's), the same batches.
    torch.manual_seed(cfg.seed)
    saved_tok = CodeTokenizer.load(out) if resume and dist.is_main else None
    data = prepare_data(cfg, dist, console, saved_tok, state["feedback"] if state else None)
    if state is not None and state["data_sha256"] != data.sha256:
        raise CheckpointError(f"{out / STATE_FILE}: the saved data do not match the candidates this version "
                              "draws; resume with the version of nanocodegen that started the run")
    tok, data_seconds = data.tok, time.perf_counter() - t_start
    model_cfg = ModelConfig(**{**asdict(model_cfg), "vocab_size": tok.vocab_size})
    model = NanoCodeGenAgent.from_config(model_cfg).to(dist.device)
    if dist.rank:  # dropout masks differ between ranks, as they would between one process's samples
        torch.manual_seed(cfg.seed + dist.rank)
    amp = autocast_dtype(cfg.precision, dist.device)
    if dist.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside autocast (evaluation)
    val_episodes = fixed_episodes(data.val, cfg.seed, model_cfg.max_seq_len)
    opt = make_optimizer(model, cfg)
    batches = BatchStream(EpisodeStream(data.train, cfg.seed, cfg.repair_fraction, model_cfg.max_seq_len),
                          cfg.batch_size, cfg.seed)
    progress = RunProgress()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        rngs = state["rng"]  # one per rank; another number of processes takes rank 0's
        set_rng_state(rngs[dist.rank] if len(rngs) == dist.world_size else rngs[0], dist.device)
        progress = RunProgress(**state["progress"])
    train_model = model
    if dist.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=model.feedback_embed is not None,  # retry embeddings get no gradient here
        )
    end_step = cfg.stop_at or cfg.max_steps
    console.print(
        f"model {model.num_params() / 1e6:.2f}M params, vocab {tok.vocab_size}; {len(data.train)} train tasks, "
        f"{len(val_episodes)} val episodes; data ready in {data_seconds:.0f}s; {dist.world_size} process(es) on "
        f"{dist.device.type}, autocast {amp or 'off'}; global batch {cfg.batch_size} episodes"
        + (f"; resuming after step {progress.step}" if state else "")
    )

    meta = {"train": asdict(cfg), "prompt": {"feedback_budget": cfg.feedback_budget}, "command": command}
    log_path = out / LOG_FILE
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        kept = []
        if state is not None:  # the command that started the run stays; resumes are listed
            saved = json.loads((out / CONFIG_FILE).read_text())
            meta["command"] = saved.get("command", "")
            meta["resumes"] = [*saved.get("resumes", []), {"step": progress.step, "command": command}]
            # a run killed after its last save logged steps that will now run again
            lines = log_path.read_text().splitlines() if log_path.is_file() else []
            kept = [line for line in lines if json.loads(line)["step"] <= progress.step]
        log = log_path.open("w")
        log.writelines(line + "\n" for line in kept)

    def write_checkpoint(rngs: list[dict] | None) -> None:
        """The checkpoint folder; with `rngs` (every rank's RNG state) also train_state.pt, else the
        run is complete and its train_state.pt goes."""
        meta["result"] = {
            "val_loss": round(progress.val_loss, 5), "best_val_loss": round(progress.best_val, 5),
            "steps": progress.step, "complete": progress.step == cfg.max_steps, "tokens": progress.tokens,
            "train_seconds": round(progress.seconds, 1), "data_seconds": round(data_seconds, 1),
            "data_sha256": data.sha256, "torch": torch.__version__, "processes": dist.world_size,
            "device": dist.device.type, "threads": torch.get_num_threads(), "autocast": str(amp) if amp else None,
        }  # fmt: skip
        if rngs is not None:
            save_state(out, {"step": progress.step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "batches": batches.state_dict(), "rng": rngs, "progress": asdict(progress),
                             "feedback": data.feedback, "data_sha256": data.sha256, "world_size": dist.world_size})
        save_checkpoint(out, model, tok, meta)
        if rngs is None and (out / STATE_FILE).exists():
            (out / STATE_FILE).unlink()

    model.train()
    # A fresh run's clock includes data preparation (as the log always has); a resumed one continues.
    t_clock = time.perf_counter() - progress.seconds if state else t_start
    with progress_bar(console) as bar:
        job = bar.add_task("training", total=cfg.max_steps, completed=progress.step, info="")
        for step in range(progress.step, end_step):
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            micro = shard(next(batches), dist.rank, dist.world_size, cfg.grad_accum)
            loss, tokens = train_step(train_model, opt, micro, tok.pad_id, dist, amp, cfg.grad_clip)
            progress.step, progress.tokens = step + 1, progress.tokens + tokens
            evaluating = progress.step % cfg.eval_interval == 0 or progress.step == cfg.max_steps
            if evaluating and dist.is_main:
                progress.val_loss = evaluate(model, val_episodes, tok.pad_id)
                progress.best_val = min(progress.best_val, progress.val_loss)
            progress.seconds = time.perf_counter() - t_clock
            saving = progress.step == end_step or (cfg.save_interval and progress.step % cfg.save_interval == 0)
            resumable = saving and progress.step < cfg.max_steps
            rngs = distributed.all_gather(rng_state(dist.device), dist) if resumable else None
            if not dist.is_main:
                continue
            record = {"step": progress.step, "loss": round(loss, 5), "lr": lr, "tokens": progress.tokens,
                      "seconds": round(progress.seconds, 2)}
            if evaluating:
                record["val_loss"] = round(progress.val_loss, 5)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if saving:
                write_checkpoint(rngs)
            bar.update(job, advance=1, info=f"loss {loss:.3f} val {progress.val_loss:.3f}")
    if dist.is_main:
        log.close()
    if end_step < cfg.max_steps:
        console.print(f"stopped after step {end_step} of {cfg.max_steps}, {progress.seconds:.0f}s; continue with "
                      f"`nanocodegen train --resume {out}`")
    else:
        console.print(f"val loss {progress.val_loss:.4f} (code tokens) after {cfg.max_steps} steps, "
                      f"{progress.seconds:.0f}s; wrote {out}")
    return out


def command_line() -> str:
    return shlex.join(["nanocodegen", *sys.argv[1:]])
