"""The agent loop: prompt -> generate -> verify -> feedback -> retry, one record per attempt.

Context policy: an attempt starts only if its prompt leaves room for `max_new_tokens` more tokens
within the model's `max_seq_len`. When it does not, the episode stops with a final attempt record
whose outcome is `context_overflow` (nothing is generated for it).

Sampling (temperature > 0) draws from a generator seeded per episode from the run's seed and the task
id, so a task's attempts do not depend on which tasks ran before it (or beside it, in `batch.py`).
The helpers below the class are shared with the batched runner, so both keep the same records.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

import torch

from nanocodegen.config import AgentConfig
from nanocodegen.generate import Generation, PrefixCache, generate
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import format_feedback, retry_ids, task_ids
from nanocodegen.records import AttemptRecord, EpisodeRecord, Outcome, Verdict
from nanocodegen.tasks import Task
from nanocodegen.tokenizer import CodeTokenizer
from nanocodegen.verify_suite import verify_task


class Agent:
    def __init__(
        self,
        model: NanoCodeGenAgent,
        tokenizer: CodeTokenizer,
        verifier,
        config: AgentConfig | None = None,
        feedback_budget: int = 32,
    ):
        self.model, self.tok, self.verifier = model, tokenizer, verifier
        self.config = config or AgentConfig()
        self.feedback_budget = feedback_budget
        self.device = next(model.parameters()).device
        if self.config.kv_cache == "prefix" and model.feedback_embed is not None:
            raise ValueError(
                "this model uses retry-step conditioning, which changes every position's input on each "
                "retry, so a KV cache cannot be reused across attempts; use --kv-cache attempt or none"
            )
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.first_token_hook: Callable[[int], None] | None = None

    def run(self, task: Task, on_first_token: Callable[[int], None] | None = None) -> EpisodeRecord:
        """One episode. `on_first_token(token_id)` is called when attempt 1 samples its first token."""
        self.first_token_hook = on_first_token
        try:
            return self._run(task)
        finally:
            self.first_token_hook = None

    def _run(self, task: Task) -> EpisodeRecord:
        cfg, tok = self.config, self.tok
        t_start = time.perf_counter()
        episode = new_episode(task)
        first_prompt = task_ids(tok, task.prompt)
        context = list(first_prompt)
        prefix_cache = PrefixCache() if cfg.kv_cache == "prefix" else None
        self.generator.manual_seed(episode_seed(cfg.seed, task.id))
        for attempt in range(1, cfg.max_attempts + 1):
            if len(context) + cfg.max_new_tokens > self.model.max_seq_len:
                episode.attempts.append(overflow_record(attempt, len(context)))
                break
            gen = self.generate_attempt(context, attempt, prefix_cache)
            ids = gen.tokens[0].tolist()
            code = tok.decode(ids)
            t0 = time.perf_counter()
            # Tasks with tests (HumanEval) are judged by them, the code completing the prompt; the rest
            # by their expected output.
            verdict: Verdict = verify_task(self.verifier, task, code, cfg.timeout_ms)
            verify_ms = (time.perf_counter() - t0) * 1e3
            record = attempt_record(attempt, context, ids, code, gen, verdict, verify_ms,
                                    self.kv_cache_bytes(len(context) + len(ids) - 1))
            episode.attempts.append(record)
            if verdict.outcome is Outcome.CORRECT:
                episode.solved, episode.attempts_to_correct = True, attempt
                break
            context = next_context(cfg, tok, first_prompt, context, ids, record.feedback, self.feedback_budget)
        return finish_episode(episode, t_start)

    def generate_attempt(self, context: list[int], attempt: int, prefix_cache: PrefixCache | None) -> Generation:
        """One attempt's tokens for this context. Tests override this with a scripted stand-in."""
        cfg = self.config
        hook = self.first_token_hook if attempt == 1 else None
        return generate(
            self.model,
            torch.tensor([context], device=self.device),
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            stop_token=self.tok.end_id,
            retry_step=attempt - 1 if self.model.feedback_embed is not None else 0,
            cache_mode=cfg.kv_cache,
            prefix_cache=prefix_cache,
            generator=self.generator,
            on_first_token=(lambda token: hook(int(token[0]))) if hook else None,
        )

    def kv_cache_bytes(self, length: int) -> int:
        """Bytes of keys and values the cache holds for `length` positions (0 without a cache)."""
        return self.model.kv_cache_bytes(length) if self.config.kv_cache != "none" else 0



def episode_seed(seed: int, task_id: str) -> int:
    """The sampling seed of one episode: stable across runs, processes and run order."""
    return (seed * 1_000_003 + zlib.crc32(task_id.encode())) % 2**63


def new_episode(task: Task) -> EpisodeRecord:
    return EpisodeRecord(
        id=task.id, prompt=task.prompt, expected=task.expected, solved=False,
        family=task.family, tier=task.tier, held_out=task.held_out,
    )


def attempt_record(
    attempt: int, context: list[int], ids: list[int], code: str, gen: Generation, verdict: Verdict,
    verify_ms: float, kv_cache_bytes: int,
) -> AttemptRecord:
    """The record of one judged attempt; its `feedback` is what the next prompt gets ("" if solved)."""
    solved = verdict.outcome is Outcome.CORRECT
    return AttemptRecord(
        attempt=attempt,
        context_tokens=len(context),
        new_tokens=len(ids),
        prefill_tokens=gen.prefill_tokens,
        cached_tokens=gen.cached_tokens,
        prefill_ms=gen.prefill_ms,
        decode_ms=gen.decode_ms,
        ttft_ms=gen.ttft_ms,
        verify_ms=verify_ms,
        outcome=verdict.outcome.value,
        kv_cache_bytes=kv_cache_bytes,
        code=code,
        output=verdict.output,
        feedback="" if solved else format_feedback(verdict),
    )


def next_context(
    cfg: AgentConfig, tok: CodeTokenizer, first_prompt: list[int], context: list[int], ids: list[int],
    feedback: str, feedback_budget: int,
) -> list[int]:
    """The prompt of the next attempt after a failed one."""
    if cfg.withhold_feedback:
        return list(first_prompt)  # ablation: independent resampling of the bare task
    return context + retry_ids(tok, ids, feedback, feedback_budget)


def finish_episode(episode: EpisodeRecord, t_start: float) -> EpisodeRecord:
    episode.total_prompt_tokens = sum(a.context_tokens for a in episode.attempts)
    episode.total_new_tokens = sum(a.new_tokens for a in episode.attempts)
    episode.wall_ms = (time.perf_counter() - t_start) * 1e3
    return episode


def overflow_record(attempt: int, context_tokens: int) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt, context_tokens=context_tokens, new_tokens=0, prefill_tokens=0, cached_tokens=0,
        prefill_ms=0.0, decode_ms=0.0, ttft_ms=0.0, verify_ms=0.0,
        outcome=Outcome.CONTEXT_OVERFLOW.value, kv_cache_bytes=0, code="", output=None, feedback="",
    )
