"""Batched agents: N task episodes at once on one model, each at its own attempt and context length.

    nanocodegen bench --batch 16

Each episode owns one row ("slot") of a KV cache installed for N sequences. Every scheduler round:
  1. attempts whose verification finished are recorded; a failed one extends its episode's context
     with the attempt and the verifier's feedback and becomes ready again, a finished episode hands its
     slot to the next task;
  2. one model step (`NanoCodeGenAgent.forward_rows`) takes, packed into one sequence, the prompt of
     every attempt starting (with `--kv-cache prefix`, only the tokens after the prefix its row already
     holds) and the last token of every attempt decoding; the linear layers run once over them all and
     each row attends to exactly its own cached positions (prefill and decode in one step, as vLLM's
     chunked prefill does). Each row samples its next token; an attempt that ends (stop token or token
     budget) hands its program to a verifier thread and keeps its row while it waits.
     With `compile_decode` (`bench --batch N --compile`) the step splits in two: the prompts starting go
     through one compiled packed step (`packed_step`, with the attention kernel; without it a compiled
     padded prefill, `prefill_padded`, and that packed forward for prompts after a cached prefix), then
     every attempt decoding takes its next tokens from one compiled call over their cache rows
     (`decode_step` on named rows; a greedy chunk of `DECODE_CHUNK` tokens when every attempt has room
     for them, else one). The cache has one scratch row beyond the N slots, which
     pads a lone decoding row to two so that one compiled graph serves every step.
Verification runs in threads (the sandbox does the work in other processes), so checking one episode's
program overlaps the generation of the others. The first attempts' programs all reach the sandbox within
a few steps of each other, so a run first asks it to fork a child per slot (CodeVerifier.prefork) while
the first steps run, when one core would otherwise idle.

Records are the sequential agent's (`agent.py` helpers): under greedy decoding the same tokens, codes,
outcomes and token counts; only times differ. Per attempt, `prefill_ms` is the step that computed the
attempt's prompt (shared with other rows' tokens), `ttft_ms` runs from the attempt being ready to its
first token, `decode_ms` from the first token to the last (steps are shared, so this is the latency the
episode saw), `verify_ms` is the verifier call itself.
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
from nanocodegen.generate import CompiledDecode, Generation, PrefixCache, sample
from nanocodegen.model import BF16_MIN_ROWS, NanoCodeGenAgent
from nanocodegen.prompt import task_ids
from nanocodegen.records import EpisodeRecord, Outcome, Verdict
from nanocodegen.tasks import Task
from nanocodegen.tokenizer import CodeTokenizer
from nanocodegen.verify_suite import verify_task

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


def _timed_verify(verifier, task: Task, code: str, timeout_ms: int) -> tuple[Verdict, float]:
    t0 = time.perf_counter()
    verdict = verify_task(verifier, task, code, timeout_ms)  # tests if the task has them, else `expected`
    return verdict, (time.perf_counter() - t0) * 1e3


def padding_groups(lengths: list[int], waste: float = 2.0) -> list[list[int]]:
    """Indices of prompts (their lengths) grouped for padded prefills: sorted by length, a group closes
    before a prompt longer than `waste` times its shortest, so padding at most doubles a group's tokens
    (a long retry prompt, without prefix reuse, does not pad a batch of short first prompts)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[i] <= waste * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def cache_rows(batch_size: int, n_tasks: int) -> int:
    """KV-cache rows a run installs: one per slot, and a scratch row (see `BatchedAgents._decode`)."""
    return min(batch_size, n_tasks) + 1


@dataclass
class BatchStats:
    """Where a batched run's main thread spent its time (seconds), and how full its steps were."""

    steps: int = 0
    step_s: float = 0.0  # in model steps (prefills and decodes together)
    prefills: int = 0  # attempts started, summed over steps
    decode_calls: int = 0  # model calls that decoded (a greedy chunk or one token per row)
    decoding_rows: int = 0  # rows decoded, summed over calls
    decoded_tokens: int = 0  # tokens computed by those calls (a greedy chunk computes several per row)
    discarded_tokens: int = 0  # computed by a greedy chunk past an attempt's end, and dropped
    waiting_s: float = 0.0  # nothing to generate: every live episode was being verified

    def as_dict(self) -> dict:
        mean = self.decoding_rows / self.decode_calls if self.decode_calls else 0.0
        return {**self.__dict__, "mean_decoding_rows": mean}


class BatchedAgents:
    """Runs episodes `batch_size` at a time; `run` returns them in task order and leaves `stats`."""

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
        self.stats = BatchStats()
        self._on_first_token: Callable[[int, int], None] | None = None
        self._should_stop: Callable[[], bool] | None = None
        self.retry_conditioned = model.feedback_embed is not None
        if cfg.kv_cache == "prefix" and self.retry_conditioned:
            raise ValueError(
                "this model uses retry-step conditioning, which changes every position's input on each "
                "retry, so a KV cache cannot be reused across attempts; use --kv-cache attempt or none"
            )

    @torch.inference_mode()
    def run(
        self,
        tasks: Iterable[Task],
        on_episode: Callable[[int, EpisodeRecord], None] | None = None,
        on_first_token: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[EpisodeRecord]:
        """Run every task; `on_episode(index, record)` is called as each episode finishes, and
        `on_first_token(index, token_id)` when an episode's first attempt samples its first token. Once
        `should_stop()` is true no new episode starts (those running finish): the tasks not run are absent
        from the result."""
        self._on_first_token, self._should_stop = on_first_token, should_stop
        pending = deque(enumerate(tasks))
        done: dict[int, EpisodeRecord] = {}
        self.stats = stats = BatchStats()
        slots = [_Slot(row) for row in range(min(self.batch_size, len(pending)))]
        if not slots:
            return []
        if self.config.kv_cache != "none":
            self.model.setup_kv_cache(cache_rows(self.batch_size, len(slots)))

        def finished(slot: _Slot) -> None:
            record = finish_episode(slot.episode, slot.t_episode)
            done[slot.index] = record
            if on_episode is not None:
                on_episode(slot.index, record)
            self._start_episode(slot, pending)

        prefork = getattr(self.verifier, "prefork", None)
        if prefork is not None and len(slots) > 1:
            # The first programs are checked back to back once they come: fork their children now, in
            # the time the first steps take, rather than one per check then.
            prefork(len(slots))
        with ThreadPoolExecutor(max_workers=self.verify_threads, thread_name_prefix="verify") as pool:
            for slot in slots:
                self._start_episode(slot, pending)
            while any(s.state != IDLE for s in slots):
                for slot in slots:
                    if slot.state == VERIFYING and slot.future.done():
                        if self._judge(slot):
                            finished(slot)
                for slot in slots:
                    if slot.state == READY and not self._fits(slot):
                        slot.episode.attempts.append(overflow_record(slot.attempt, len(slot.context)))
                        finished(slot)
                starting = [s for s in slots if s.state == READY and self._fits(s)]
                decoding = [s for s in slots if s.state == DECODING]
                t0 = time.perf_counter()
                if starting or decoding:
                    self._step(starting, decoding, pool)
                    stats.steps += 1
                    stats.step_s += time.perf_counter() - t0
                    stats.prefills += len(starting)
                elif any(s.state == VERIFYING for s in slots):
                    wait([s.future for s in slots if s.state == VERIFYING], return_when=FIRST_COMPLETED)
                    stats.waiting_s += time.perf_counter() - t0
        return [done[i] for i in sorted(done)]

    # --- one episode's life ------------------------------------------------------------------------
    def _start_episode(self, slot: _Slot, pending: deque) -> None:
        if self._should_stop is not None and self._should_stop():
            pending.clear()
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

    def _begin(self, slot: _Slot) -> tuple[int, list[int]]:
        """Start an attempt: (positions reused from the row's cache, prompt tokens left to compute)."""
        T = len(slot.context)
        slot.budget = min(self.config.max_new_tokens, self.model.max_seq_len - T)
        cached = slot.prefix.reusable(slot.context) if self.config.kv_cache == "prefix" else 0
        slot.gen = Generation(torch.empty(0), 0.0, 0.0, 0.0, prefill_tokens=T - cached, cached_tokens=cached)
        return cached, slot.context[cached:]

    def _started(self, slot: _Slot, token: int, t0: float, pool: ThreadPoolExecutor) -> None:
        slot.t_first = time.perf_counter()
        slot.gen.prefill_ms = (slot.t_first - t0) * 1e3
        slot.gen.ttft_ms = (slot.t_first - slot.t_ready) * 1e3
        slot.state = DECODING
        if slot.attempt == 1 and self._on_first_token is not None:
            self._on_first_token(slot.index, token)
        self._append(slot, token, pool)

    def _append(self, slot: _Slot, token: int, pool: ThreadPoolExecutor) -> None:
        """Add one generated token; end the attempt on the stop token or at the budget."""
        slot.tokens.append(token)
        if token == self.tok.end_id or len(slot.tokens) >= slot.budget:
            slot.gen.decode_ms = (time.perf_counter() - slot.t_first) * 1e3
            if self.config.kv_cache == "prefix":  # the row holds the prompt and every token but the last
                slot.prefix.tokens = slot.context + slot.tokens[:-1]
            slot.code = self.tok.decode(slot.tokens)
            slot.future = pool.submit(_timed_verify, self.verifier, slot.task, slot.code,
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
    def _step(self, starting: list[_Slot], decoding: list[_Slot], pool: ThreadPoolExecutor) -> None:
        """One scheduler step: the prompts of the attempts starting and the next tokens of those decoding.

        Eagerly (and without a cache), one packed forward computes both, each row attending to exactly
        its own keys. With `compile_decode`, the prompts go first: with the attention kernel all in one
        compiled packed step (`packed_step`); without it, those from position 0 right-padded through one
        compiled call per group of similar lengths (`_padded_logits`), those after a cached prefix through
        that packed forward; then every attempt decoding (those just started included)
        takes a greedy chunk, or one token, from one compiled call over their cache rows (`_decode`)."""
        t0 = time.perf_counter()
        compiled = getattr(self.model, "compiled_decode", None)
        if self.config.kv_cache == "none" or compiled is None:
            rows = starting + decoding
            if self.config.kv_cache == "none":
                logits = self._uncached_logits(starting, decoding)
            else:
                logits = self._packed_logits(starting, decoding)
            tokens = self._pick(logits, rows)
            for slot, token in zip(starting, tokens, strict=False):
                self._started(slot, token, t0, pool)
            for slot, token in zip(decoding, tokens[len(starting) :], strict=True):
                self._append(slot, token, pool)
            if decoding:
                self.stats.decode_calls += 1
                self.stats.decoding_rows += len(decoding)
                self.stats.decoded_tokens += len(decoding)
            return
        fresh, resumed = [], []  # prompts from position 0 (first attempts; every attempt without prefix reuse)
        if self.model._attention_kernel:  # every prompt in one compiled packed step (see packed_step)
            resumed = starting
        else:
            for slot in starting:
                (resumed if self._reusable(slot) else fresh).append(slot)
        for group in padding_groups([len(s.context) for s in fresh]):
            slots = [fresh[i] for i in group]
            for slot, token in zip(slots, self._pick(self._padded_logits(slots), slots), strict=True):
                self._started(slot, token, t0, pool)
        if resumed:
            logits = self._packed_logits(resumed, [], pad_lone=True)
            for slot, token in zip(resumed, self._pick(logits, resumed), strict=True):
                self._started(slot, token, t0, pool)
        decoding = [s for s in decoding + starting if s.state == DECODING]
        if decoding:
            self._decode(decoding, compiled, pool)

    def _reusable(self, slot: _Slot) -> int:
        """Positions of the slot's context its cache row already holds (prefix mode), else 0."""
        return slot.prefix.reusable(slot.context) if self.config.kv_cache == "prefix" else 0

    def _padded_logits(self, starting: list[_Slot]) -> torch.Tensor:
        """(rows, vocab) logits of the whole prompts of attempts starting from position 0, right-padded to
        one length, from one compiled call (`prefill_padded`); a lone prompt is padded to two with the
        cache's scratch row, so that one graph serves every call."""
        prompts = [self._begin(slot)[1] for slot in starting]
        rows, lengths = [s.row for s in starting], [len(p) for p in prompts]
        steps = [s.attempt - 1 for s in starting]
        if len(starting) == 1:  # a one-token prompt on the scratch row (the cache's last)
            prompts, rows = prompts + [[0]], rows + [self.model.cache_batch_size - 1]
            lengths, steps = lengths + [1], steps + [0]
        longest = max(lengths)
        ids = torch.tensor([p + [self.tok.pad_id] * (longest - len(p)) for p in prompts], device=self.device)
        as_tensor = lambda values: torch.tensor(values, device=self.device)  # noqa: E731
        retry = as_tensor(steps) if self.retry_conditioned else None
        return self.model.prefill_padded(ids, as_tensor(rows), as_tensor(lengths), retry)[: len(starting)]

    def _packed_logits(self, starting: list[_Slot], decoding: list[_Slot], pad_lone: bool = False) -> torch.Tensor:
        """(rows, vocab) logits from one packed forward (`forward_rows`): the prompt of each attempt
        starting (after the prefix its row holds) and the last token of each attempt decoding; each row
        reads and writes only its own cache row. `pad_lone`: a lone row gets a one-token companion on the
        cache's scratch row, so that one compiled graph serves every call (compiled, as for decode)."""
        ids, starts, counts = [], [], []
        for slot in starting:
            cached, todo = self._begin(slot)
            ids += todo
            starts.append(cached)
            counts.append(len(todo))
        for slot in decoding:
            ids.append(slot.tokens[-1])
            starts.append(len(slot.context) + len(slot.tokens) - 1)
            counts.append(1)
        rows = starting + decoding
        steps = [s.attempt - 1 for s in rows] if self.retry_conditioned else None
        cache_rows = [s.row for s in rows]
        if pad_lone and len(rows) == 1:
            ids, cache_rows, starts, counts = ids + [0], cache_rows + [self.model.cache_batch_size - 1], \
                starts + [0], counts + [1]
            steps = None if steps is None else steps + [0]
        logits = self.model.forward_rows(torch.tensor(ids, device=self.device), cache_rows, starts, counts, steps)
        return logits[: len(rows)]

    def _decode(self, decoding: list[_Slot], compiled: CompiledDecode, pool: ThreadPoolExecutor) -> None:
        """The next tokens of the attempts decoding, in one compiled call over the cache rows: a greedy
        chunk of several tokens where every attempt has room for all of them, else one token. Compiled,
        one attention call over the named rows (up to the longest context among them) costs less than one
        exact call per row; eagerly, it is the other way round (hence `_packed_logits` there). Tokens a chunk computes
        past an attempt's end are dropped (their cache writes lie past anything the row keeps)."""
        positions = [len(s.context) + len(s.tokens) - 1 for s in decoding]  # where each last token goes
        chunk = compiled.chunk if self.config.temperature <= 0 else 1
        if chunk > 1 and any(len(s.tokens) + chunk > s.budget for s in decoding):
            chunk = 1
        n_keys = max(positions) + 1
        tokens = [s.tokens[-1] for s in decoding]
        rows = [s.row for s in decoding]
        steps = [s.attempt - 1 for s in decoding]
        if len(decoding) == 1:
            # A compiled step specialises a batch of one; the cache's scratch row (the last, no slot's)
            # pads a lone row to two, so that one compiled graph serves every step.
            tokens, positions, steps = tokens + [0], positions + [0], steps + [0]
            rows = rows + [self.model.cache_batch_size - 1]
        as_tensor = lambda values: torch.tensor(values, device=self.device)  # noqa: E731
        args = (as_tensor(tokens), as_tensor(positions), n_keys)
        retry = as_tensor(steps) if self.retry_conditioned else None
        # With a bf16 cache, few rows decode faster with fp32 products (see NanoCodeGenAgent.decode_step)
        products = torch.float32 if len(rows) < BF16_MIN_ROWS and self.model.decode_dtype != torch.float32 else None
        if chunk > 1:
            new = compiled.greedy(*args, retry_steps=retry, rows=as_tensor(rows), products=products)
            new = new.tolist()  # (R, chunk)
        else:
            logits = self.model.decode_step(*args, retry, as_tensor(rows), products)[: len(decoding)]
            new = [[t] for t in self._pick(logits, decoding)]
        self.stats.decode_calls += 1
        self.stats.decoding_rows += len(decoding)
        self.stats.decoded_tokens += len(decoding) * chunk
        for slot, tokens in zip(decoding, new, strict=False):  # a scratch row's tokens come last
            for i, token in enumerate(tokens):
                self._append(slot, token, pool)
                if slot.state != DECODING:
                    self.stats.discarded_tokens += len(tokens) - i - 1
                    break

    def _pick(self, logits: torch.Tensor, slots: list[_Slot]) -> list[int]:
        """Each row's next token: greedy, or sampled from the row's own generator."""
        if self.config.temperature > 0:
            return [self._sample(logits[i : i + 1], s) for i, s in enumerate(slots)]
        return logits.argmax(dim=-1).tolist()

    def _uncached_logits(self, starting: list[_Slot], decoding: list[_Slot]) -> torch.Tensor:
        """Cache mode "none": each row's whole context, right-padded, recomputed in one forward. Causal
        attention keeps padding (after each row's tokens) from reaching the positions read."""
        for slot in starting:
            self._begin(slot)
        rows = starting + decoding
        seqs = [s.context + s.tokens for s in rows]
        longest = max(map(len, seqs))
        ids = torch.tensor([q + [self.tok.pad_id] * (longest - len(q)) for q in seqs], device=self.device)
        last = torch.tensor([len(q) - 1 for q in seqs], device=self.device)
        if self.retry_conditioned:  # one retry step per forward: group rows by it
            out = torch.empty(len(seqs), self.model.vocab_size, device=self.device)
            for step in {s.attempt - 1 for s in rows}:
                idx = [i for i, s in enumerate(rows) if s.attempt - 1 == step]
                logits = self.model(ids[idx], retry_step=step)[0]
                out[idx] = logits[torch.arange(len(idx)), last[idx]]
            return out
        logits = self.model(ids)[0]  # (rows, longest, vocab)
        return logits[torch.arange(len(seqs), device=self.device), last]

    def _sample(self, logits: torch.Tensor, slot: _Slot) -> int:
        cfg = self.config
        return int(sample(logits, cfg.temperature, cfg.top_k or None, slot.generator)[0])
