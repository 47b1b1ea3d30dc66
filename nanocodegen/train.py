"""Train the code model from scratch, on one process or many.

    nanocodegen train                                    # the default model, as shipped (about 15 min on 2 cores)
    nanocodegen train --preset smoke --out /tmp/ckpt     # seconds, for a check
    torchrun --standalone --nproc_per_node=2 -m nanocodegen train --preset smoke --out /tmp/ckpt
    nanocodegen train --resume runs/train                # continue an interrupted run where it stopped

Steps: draw training tasks from the synthetic families' train split, corrupt their solutions and run
every wrong attempt through the sandboxed verifier for its real message, train the BPE tokenizer on
that text, then train the transformer with cross-entropy on the code tokens only (AdamW, warmup +
cosine decay, gradient clipping, periodic validation loss on the val split). Writes a checkpoint
folder (see checkpoint.py) whose config.json records the exact command and settings, plus
train_state.pt (model, optimizer, step, data position, RNG) every --save-interval steps until the run
completes, for --resume.

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
import random
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
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
    EpisodeStream,
    TokenizedTask,
    candidate_jobs,
    check_jobs,
    collect_failures,
    episode_text,
    fixed_episodes,
    tokenize_tasks,
)
from nanocodegen.distributed import Dist
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import IGNORE
from nanocodegen.tasks import load_suite
from nanocodegen.tokenizer import CodeTokenizer

STATE_FILE = "train_state.pt"
# Settings a resumed run may change: none of them changes what is computed.
RESUME_MAY_CHANGE = ("stop_at", "save_interval", "data_workers")

Episode = tuple[list[int], list[int]]  # (input ids, target ids)


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


def pad_batch(episodes: list[Episode], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (inputs, targets) pairs to the longest: (B, T) inputs, (B, T) targets (-100 on pads)."""
    T = max(len(x) for x, _ in episodes)
    x = torch.full((len(episodes), T), pad_id, dtype=torch.long)
    y = torch.full((len(episodes), T), IGNORE, dtype=torch.long)
    for i, (inp, tgt) in enumerate(episodes):
        x[i, : len(inp)] = torch.tensor(inp)
        y[i, : len(tgt)] = torch.tensor(tgt)
    return x, y


class BatchStream:
    """Endless global batches of `batch_size` episodes. Episodes are grouped by length within windows
    of `bucket` batches so little compute goes to padding (each batch comes out sorted by length); the
    batch order within a window is shuffled. Its position is plain data (`state_dict`)."""

    def __init__(self, episodes: EpisodeStream, batch_size: int, seed: int, bucket: int = 16):
        self.episodes, self.batch_size, self.bucket = episodes, batch_size, bucket
        self.rng = random.Random(seed)
        self.pending: list[list[Episode]] = []  # the current window's batches not yet handed out

    def __iter__(self):
        return self

    def __next__(self) -> list[Episode]:
        if not self.pending:
            window = [next(self.episodes) for _ in range(self.batch_size * self.bucket)]
            window.sort(key=lambda e: len(e[0]))
            self.pending = [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
            self.rng.shuffle(self.pending)
        return self.pending.pop(0)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "pending": list(self.pending), "episodes": self.episodes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.pending = list(state["pending"])
        self.episodes.load_state_dict(state["episodes"])


def shard(batch: list[Episode], rank: int, world_size: int, grad_accum: int) -> list[list[Episode]]:
    """This rank's micro-batches of a global batch: episodes rank, rank + W, ... (the batch is sorted by
    length, so each rank gets a like share of tokens), cut into `grad_accum` runs of similar length."""
    mine = batch[rank::world_size]
    n = len(mine)
    return [mine[k * n // grad_accum : (k + 1) * n // grad_accum] for k in range(grad_accum)]


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
    batches = [tuple(t.to(dist.device, non_blocking=True) for t in pad_batch(mb, pad_id)) for mb in micro]
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
        with CodeVerifier(workers=workers) as verifier, progress_bar(console) as bar:
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


def save_state(out: Path, state: dict) -> None:
    """Write train_state.pt atomically: a run killed mid-write keeps the previous state."""
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


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
    state = None
    if resume:  # rank 0 reads the saved state; the others get it from rank 0, so only it needs the folder
        state = torch.load(out / STATE_FILE, weights_only=True) if dist.is_main else None
        state = distributed.broadcast(state, dist)
    # Same seed on every rank: the same initial weights (DDP also copies rank 0's), the same batches.
    torch.manual_seed(cfg.seed)
    saved_tok = CodeTokenizer.load(out) if resume and dist.is_main else None
    data = prepare_data(cfg, dist, console, saved_tok, state["feedback"] if state else None)
    tok, train_data, val_data = data.tok, data.train, data.val
    if state is not None and state["data_sha256"] != data.sha256:
        raise CheckpointError(f"{out / STATE_FILE}: the saved data do not match the candidates this version "
                              "draws; resume with the version of nanocodegen that started the run")
    data_seconds = time.perf_counter() - t_start
    model_cfg = ModelConfig(**{**asdict(model_cfg), "vocab_size": tok.vocab_size})
    model = NanoCodeGenAgent.from_config(model_cfg).to(dist.device)
    if dist.rank:  # dropout masks differ between ranks, as they would between one process's samples
        torch.manual_seed(cfg.seed + dist.rank)
    amp = autocast_dtype(cfg.precision, dist.device)
    val_episodes = fixed_episodes(val_data, cfg.seed, model_cfg.max_seq_len)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=dist.device.type == "cuda" or None,
    )
    batches = BatchStream(EpisodeStream(train_data, cfg.seed, cfg.repair_fraction, model_cfg.max_seq_len),
                          cfg.batch_size, cfg.seed)
    start_step, tokens_seen, best_val, val_loss, seconds_before = 0, 0, float("inf"), float("nan"), 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        rngs = state["rng"]
        set_rng_state(rngs[dist.rank] if len(rngs) == dist.world_size else rngs[0], dist.device)
        start_step, tokens_seen, seconds_before = state["step"], state["tokens"], state["seconds"]
        best_val, val_loss = state["best_val"], state["val_loss"]
    train_model = model
    if dist.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=model.feedback_embed is not None,  # retry embeddings get no gradient here
        )
    end_step = cfg.stop_at or cfg.max_steps
    console.print(
        f"model {model.num_params() / 1e6:.2f}M params, vocab {tok.vocab_size}; {len(train_data)} train tasks, "
        f"{len(val_episodes)} val episodes; data ready in {data_seconds:.0f}s; {dist.world_size} process(es) on "
        f"{dist.device.type}, autocast {amp or 'off'}; global batch {cfg.batch_size} episodes"
        + (f", resuming at step {start_step}" if state else "")
    )

    log_path = out / LOG_FILE
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start_step] if (
            state and log_path.is_file()) else []
        log = log_path.open("w")
        log.writelines(line + "\n" for line in kept)

    started_by, resumes = command, []
    if state is not None and dist.is_main:  # the command that started the run stays; resumes are listed
        saved = json.loads((out / CONFIG_FILE).read_text())
        started_by = saved.get("command", "")
        resumes = [*saved.get("resumes", []), {"step": start_step, "command": command}]

    def checkpoint(step: int, rngs: list[dict] | None) -> None:
        """Write the checkpoint folder; with `rngs` (every rank's RNG state) also train_state.pt."""
        seconds = seconds_before + time.perf_counter() - t_clock
        meta = {
            "train": asdict(cfg),
            "prompt": {"feedback_budget": cfg.feedback_budget},
            "command": started_by,
            **({"resumes": resumes} if resumes else {}),
            "result": {"val_loss": round(val_loss, 5), "best_val_loss": round(best_val, 5), "steps": step,
                       "complete": step == cfg.max_steps, "tokens": tokens_seen, "train_seconds": round(seconds, 1),
                       "data_seconds": round(data_seconds, 1), "data_sha256": data.sha256, "torch": torch.__version__,
                       "processes": dist.world_size, "device": dist.device.type,
                       "threads": torch.get_num_threads(), "autocast": str(amp) if amp else None},
        }
        if rngs is not None:
            save_state(out, {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "batches": batches.state_dict(), "rng": rngs, "tokens": tokens_seen,
                             "seconds": seconds, "best_val": best_val, "val_loss": val_loss,
                             "feedback": data.feedback, "data_sha256": data.sha256, "world_size": dist.world_size})
        save_checkpoint(out, model, tok, meta)
        if rngs is None and (out / STATE_FILE).exists():
            (out / STATE_FILE).unlink()  # the run is complete: nothing left to resume

    model.train()
    t_clock = time.perf_counter() if state else t_start
    with progress_bar(console) as bar:
        job = bar.add_task("training", total=cfg.max_steps, completed=start_step, info="")
        for step in range(start_step, end_step):
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            micro = shard(next(batches), dist.rank, dist.world_size, cfg.grad_accum)
            loss, tokens = train_step(train_model, opt, micro, tok.pad_id, dist, amp, cfg.grad_clip)
            tokens_seen += tokens
            done = step + 1
            if done % cfg.eval_interval == 0 or done == cfg.max_steps:
                if dist.is_main:
                    val_loss = evaluate(model, val_episodes, tok.pad_id)
                    best_val = min(best_val, val_loss)
            saving = done == end_step or (cfg.save_interval and done % cfg.save_interval == 0)
            resumable = saving and done < cfg.max_steps
            rngs = distributed.all_gather(rng_state(dist.device), dist) if resumable else None
            if not dist.is_main:
                continue
            record = {"step": done, "loss": round(loss, 5), "lr": lr, "tokens": tokens_seen,
                      "seconds": round(seconds_before + time.perf_counter() - t_clock, 2)}
            if done % cfg.eval_interval == 0 or done == cfg.max_steps:
                record["val_loss"] = round(val_loss, 5)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if saving:
                checkpoint(done, rngs)
            bar.update(job, advance=1, info=f"loss {loss:.3f} val {val_loss:.3f}")
    if dist.is_main:
        log.close()
    seconds = seconds_before + time.perf_counter() - t_clock
    if end_step < cfg.max_steps:
        console.print(f"stopped after step {end_step} of {cfg.max_steps}, {seconds:.0f}s; continue with "
                      f"`nanocodegen train --resume {out}`")
    else:
        console.print(f"val loss {val_loss:.4f} (code tokens) after {cfg.max_steps} steps, {seconds:.0f}s; wrote {out}")
    return out


def command_line() -> str:
    return shlex.join(["nanocodegen", *sys.argv[1:]])
