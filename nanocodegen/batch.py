"""Batched agents: N task episodes at once on one model, each at its own attempt and context length.

    nanocodegen bench --batch 16

Each episode owns one row ("slot") of a KV cache installed for N sequences. Every scheduler round:
  1. attempts whose verification finished are recorded; a failed one extends its episode's context
     with the attempt and the verifier's feedback and becomes ready again, a finished episode hands its
     slot to the next task;
  2. every ready slot prefills its prompt into its own cache row (with `--kv-cache prefix`, only the
     tokens after the prefix its row already holds) and samples its first token;
  3. one batched decode step advances every decoding slot by a token, each at its own position
     (`NanoCodeGenAgent.decode_step`); a slot whose attempt ends (stop token or token budget) hands its
     program to a verifier thread and keeps its row while it waits.
Verification runs in threads (the sandbox does the work in other processes), so checking one episode's
program overlaps the generation of the others. Rows that are not decoding ride along in the step: their
output is discarded and their write lands past the content they keep, where nothing reads it.

Records are the sequential agent's (`agent.py` helpers): under greedy decoding the same tokens, codes,
outcomes and token counts; only times differ. Per attempt, `prefill_ms` is the row's own prefill,
`ttft_ms` runs from the attempt being ready to its first token, `decode_ms` from the first token to the
last (steps are shared, so this is the latency the episode saw), `verify_ms` the verifier call itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch

from nanocodegen.agent import (
    attempt_record,
    episode_seed,
    finish_episode,
    new_episode,
    next_context,
    overflow_record,
)
from nanocodegen.config import AgentConfig
from nanocodegen.generate import Generation, PrefixCache, prefill, sample
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import task_ids
from nanocodegen.records import EpisodeRecord, Outcome, Verdict
from nanocodegen.tasks import Task
from nanocodegen.tokenizer import CodeTokenizer

IDLE, READY, DECODING, VERIFYING = "idle", "ready", "decoding", "verifying"


@dataclass
class _Slot:
    """One episode in flight and the cache row it owns."""

    row: int
    state: str = IDLE
    index: int = -1  # the task's position in the run
    task: Task | None = None
    episode: EpisodeRecord | None = None
    t_episode: float = 0.0
    first_prompt: list[int] = field(default_factory=list)
    context: list[int] = field(default_factory=list)
    prefix: PrefixCache = field(default_factory=PrefixCache)  # what this row's cache holds (prefix mode)
    attempt: int = 0
    generator: torch.Generator | None = None
    # the attempt in flight
    tokens: list[int] = field(default_factory=list)
    budget: int = 0
    t_ready: float = 0.0
    t_first: float = 0.0
    gen: Generation | None = None
    code: str = ""
    future: Future | None = None


def _timed_verify(verifier, code: str, expected: str, timeout_ms: int) -> tuple[Verdict, float]:
    t0 = time.perf_counter()
    verdict = verifier.verify(code, expected, timeout_ms=timeout_ms)
    return verdict, (time.perf_counter() - t0) * 1e3


class BatchedAgents:
    """Runs episodes `batch_size` at a time; `run` returns them in task order."""

    def __init__(
        self,
        model: NanoCodeGenAgent,
        tokenizer: CodeTokenizer,
        verifier,
        config: AgentConfig | None = None,
        batch_size: int = 8,
        feedback_budget: int = 32,
        verify_threads: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.tok, self.verifier = model, tokenizer, verifier
        self.config = cfg = config or AgentConfig()
        self.batch_size, self.feedback_budget, self.verify_threads = batch_size, feedback_budget, verify_threads
        self.device = next(model.parameters()).device
        self.retry_conditioned = model.feedback_embed is not None
        if cfg.kv_cache == "prefix" and self.retry_conditioned:
            raise ValueError(
                "this model uses retry-step conditioning, which changes every position's input on each "
                "retry, so a KV cache cannot be reused across attempts; use --kv-cache attempt or none"
            )

    @torch.inference_mode()
    def run(
        self, tasks: Iterable[Task], on_episode: Callable[[int, EpisodeRecord], None] | None = None
    ) -> list[EpisodeRecord]:
        """Run every task; `on_episode(index, record)` is called as each episode finishes."""
        pending = deque(enumerate(tasks))
        done: dict[int, EpisodeRecord] = {}
        slots = [_Slot(row) for row in range(min(self.batch_size, len(pending)))]
        if not slots:
            return []
        if self.config.kv_cache != "none":
            self.model.setup_kv_cache(len(slots))

        def finished(slot: _Slot) -> None:
            record = finish_episode(slot.episode, slot.t_episode)
            done[slot.index] = record
            if on_episode is not None:
                on_episode(slot.index, record)
            self._start_episode(slot, pending)

        with ThreadPoolExecutor(max_workers=self.verify_threads, thread_name_prefix="verify") as pool:
            for slot in slots:
                self._start_episode(slot, pending)
            while any(s.state != IDLE for s in slots):
                for slot in slots:
                    if slot.state == VERIFYING and slot.future.done():
                        if self._judge(slot):
                            finished(slot)
                for slot in slots:
                    if slot.state == READY:
                        if not self._fits(slot):
                            slot.episode.attempts.append(overflow_record(slot.attempt, len(slot.context)))
                            finished(slot)
                        else:
                            self._prefill(slot, pool)
                decoding = [s for s in slots if s.state == DECODING]
                if decoding:
                    self._decode_step(slots, decoding, pool)
                elif all(s.state in (VERIFYING, IDLE) for s in slots) and any(s.state == VERIFYING for s in slots):
                    wait([s.future for s in slots if s.state == VERIFYING], return_when=FIRST_COMPLETED)
        return [done[i] for i in sorted(done)]

    # --- one episode's life ------------------------------------------------------------------------
    def _start_episode(self, slot: _Slot, pending: deque) -> None:
        if not pending:
            slot.state, slot.task = IDLE, None
            return
        slot.index, slot.task = pending.popleft()
        slot.episode, slot.t_episode = new_episode(slot.task), time.perf_counter()
        slot.first_prompt = task_ids(self.tok, slot.task.prompt)
        slot.context = list(slot.first_prompt)
        slot.prefix = PrefixCache()  # as the sequential agent: no reuse across episodes
        slot.attempt = 0
        if self.config.temperature > 0:
            slot.generator = torch.Generator(device=self.device).manual_seed(
                episode_seed(self.config.seed, slot.task.id))
        self._next_attempt(slot)

    def _next_attempt(self, slot: _Slot) -> None:
        slot.attempt += 1
        slot.state, slot.t_ready, slot.tokens = READY, time.perf_counter(), []

    def _fits(self, slot: _Slot) -> bool:
        return len(slot.context) + self.config.max_new_tokens <= self.model.max_seq_len

    def _prefill(self, slot: _Slot, pool: ThreadPoolExecutor) -> None:
        cfg, model = self.config, self.model
        T = len(slot.context)
        slot.budget = min(cfg.max_new_tokens, model.max_seq_len - T)
        step = slot.attempt - 1 if self.retry_conditioned else 0
        cached = slot.prefix.reusable(slot.context) if cfg.kv_cache == "prefix" else 0
        ids = torch.tensor([slot.context[cached:]], device=self.device)
        t0 = time.perf_counter()
        if cfg.kv_cache == "none":
            logits = model(ids, retry_step=step)[0][:, -1]
        else:
            logits = prefill(model, ids, cached, step, cache_row=slot.row)
        token = self._sample(logits, slot)
        slot.t_first = time.perf_counter()
        slot.gen = Generation(torch.empty(0), (slot.t_first - t0) * 1e3, 0.0, (slot.t_first - slot.t_ready) * 1e3,
                              prefill_tokens=T - cached, cached_tokens=cached)
        slot.state = DECODING
        self._append(slot, token, pool)

    def _append(self, slot: _Slot, token: int, pool: ThreadPoolExecutor) -> None:
        """Add one generated token; end the attempt on the stop token or at the budget."""
        slot.tokens.append(token)
        if token == self.tok.end_id or len(slot.tokens) >= slot.budget:
            slot.gen.decode_ms = (time.perf_counter() - slot.t_first) * 1e3
            if self.config.kv_cache == "prefix":  # the row holds the prompt and every token but the last
                slot.prefix.tokens = slot.context + slot.tokens[:-1]
            slot.code = self.tok.decode(slot.tokens)
            slot.future = pool.submit(_timed_verify, self.verifier, slot.code, slot.task.expected,
                                      self.config.timeout_ms)
            slot.state = VERIFYING

    def _judge(self, slot: _Slot) -> bool:
        """Record the verified attempt; True when the episode is over."""
        verdict, verify_ms = slot.future.result()
        ids, context = slot.tokens, slot.context
        kv_bytes = self.model.kv_cache_bytes(len(context) + len(ids) - 1) if self.config.kv_cache != "none" else 0
        record = attempt_record(slot.attempt, context, ids, slot.code, slot.gen, verdict, verify_ms, kv_bytes)
        slot.episode.attempts.append(record)
        if verdict.outcome is Outcome.CORRECT:
            slot.episode.solved, slot.episode.attempts_to_correct = True, slot.attempt
            return True
        if slot.attempt >= self.config.max_attempts:
            return True
        slot.context = next_context(self.config, self.tok, slot.first_prompt, context, ids, record.feedback,
                                    self.feedback_budget)
        self._next_attempt(slot)
        return False

    # --- the batched step ---------------------------------------------------------------------------
    def _decode_step(self, slots: list[_Slot], decoding: list[_Slot], pool: ThreadPoolExecutor) -> None:
        if self.config.kv_cache == "none":
            logits = self._uncached_logits(decoding)
            rows = range(len(decoding))
        else:
            logits = self._cached_logits(slots, decoding)
            rows = [s.row for s in decoding]
        if self.config.temperature > 0:
            tokens = [self._sample(logits[r : r + 1], s) for r, s in zip(rows, decoding, strict=True)]
        else:
            picked = logits.argmax(dim=-1).tolist()
            tokens = [picked[r] for r in rows]
        for slot, token in zip(decoding, tokens, strict=True):
            self._append(slot, token, pool)

    def _cached_logits(self, slots: list[_Slot], decoding: list[_Slot]) -> torch.Tensor:
        """(n_slots, vocab) logits: every row steps; only the decoding rows' logits are used."""
        last = self.model.max_seq_len - 1
        tokens, positions = [0] * len(slots), [0] * len(slots)
        for s in slots:
            if s.state == DECODING:
                tokens[s.row], positions[s.row] = s.tokens[-1], len(s.context) + len(s.tokens) - 1
            else:  # a write past what the row keeps (its cached prefix, in prefix mode), never read
                positions[s.row] = min(len(s.prefix.tokens), last)
        n_keys = max(positions[s.row] for s in decoding) + 1
        steps = None
        if self.retry_conditioned:
            steps = torch.tensor([max(s.attempt - 1, 0) for s in slots], device=self.device)
        return self.model.decode_step(torch.tensor(tokens, device=self.device),
                                      torch.tensor(positions, device=self.device), n_keys, steps)

    def _uncached_logits(self, decoding: list[_Slot]) -> torch.Tensor:
        """Cache mode "none": each decoding row's whole context, right-padded, recomputed in one forward.
        Causal attention keeps padding (after each row's tokens) from reaching the positions read."""
        seqs = [s.context + s.tokens for s in decoding]
        longest = max(map(len, seqs))
        ids = torch.tensor([q + [self.tok.pad_id] * (longest - len(q)) for q in seqs], device=self.device)
        last = torch.tensor([len(q) - 1 for q in seqs], device=self.device)
        if self.retry_conditioned:  # one retry step per forward: group rows by it
            out = torch.empty(len(seqs), self.model.vocab_size, device=self.device)
            for step in {s.attempt - 1 for s in decoding}:
                idx = [i for i, s in enumerate(decoding) if s.attempt - 1 == step]
                logits = self.model(ids[idx], retry_step=step)[0]
                out[idx] = logits[torch.arange(len(idx)), last[idx]]
            return out
        logits = self.model(ids)[0]  # (n, longest, vocab)
        return logits[torch.arange(len(seqs), device=self.device), last]

    def _sample(self, logits: torch.Tensor, slot: _Slot) -> int:
        cfg = self.config
        return int(sample(logits, cfg.temperature, cfg.top_k or None, slot.generator)[0])
