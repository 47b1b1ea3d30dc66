"""Generation: sampling, prefill, one-token decode, and `generate` with three KV-cache modes.

Cache modes (what a retry costs):
- "none":    every new token recomputes the whole context: quadratic work per attempt;
- "attempt": a KV cache within an attempt; each attempt prefills its whole prompt again;
- "prefix":  the cache outlives the attempt; the next prompt prefills only the tokens after the
             longest prefix already cached (the failed attempt's tail and the feedback).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nanocodegen.model import NanoCodeGenAgent

CACHE_MODES = ("none", "attempt", "prefix")


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, n_new) generated ids, the stop token included when one was produced
    prefill_ms: float
    decode_ms: float
    ttft_ms: float  # start of the call -> first token sampled
    prefill_tokens: int  # prompt positions computed in prefill
    cached_tokens: int  # prompt positions taken from the cache


@dataclass
class PrefixCache:
    """Which token ids the model's KV cache holds (batch size 1), for prefix reuse across attempts."""

    tokens: list[int] = field(default_factory=list)

    def reusable(self, prompt: list[int]) -> int:
        """Length of the cached prefix the prompt can reuse; at least one prompt token is left to
        prefill so that its logits are computed."""
        n = 0
        limit = min(len(self.tokens), len(prompt) - 1)
        while n < limit and self.tokens[n] == prompt[n]:
            n += 1
        return n


def _sync(device: torch.device) -> None:
    # Kernel launches are asynchronous on accelerators: wait before reading the clock.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def sample(
    logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, generator=None
) -> torch.Tensor:
    """(B, vocab) logits -> (B,) ids. Temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prefill(
    model: NanoCodeGenAgent, ids: torch.Tensor, start_pos: int, retry_step: int = 0, cache_row: int | None = None
) -> torch.Tensor:
    """Write (B, T) prompt ids into the KV cache from `start_pos` (into row `cache_row` alone when given,
    with B == 1); return the last position's logits (B, vocab)."""
    logits, _ = model(ids, retry_step=retry_step, start_pos=start_pos, cache_row=cache_row)
    return logits[:, -1]


def decode_one_token(
    model: NanoCodeGenAgent,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    n_keys: int | None = None,
    retry_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) tokens, each at its own position (B,) -> next logits (B, vocab), through the KV cache.
    The one function worth compiling or graph-capturing; see `NanoCodeGenAgent.decode_step`."""
    return model.decode_step(tokens, positions, n_keys, retry_steps)


def decode_greedy(
    model: NanoCodeGenAgent,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    n_keys: int | None,
    steps: int,
    retry_steps: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    products: torch.dtype | None = None,
) -> torch.Tensor:
    """`steps` greedy tokens per row in one call: (B,) tokens at (B,) positions -> (B, steps) ids, each
    fed back as the next step's input, so a compiled graph runs the whole chunk without returning to
    Python. Every step writes its token's keys and values at positions + i; a caller that stops inside
    the chunk discards the tokens after the stop, and their cache writes lie past anything it keeps.
    `n_keys` is step 0's bound, `rows` the cache rows of the tokens and `products` the products' dtype
    (see `decode_step`); step i's bound is n_keys + i."""
    out = []
    for i in range(steps):
        n = None if n_keys is None else n_keys + i
        # The model's own (eager) step, even where compile_decode has replaced it: a compiled chunk
        # traces the steps whole.
        logits = NanoCodeGenAgent.decode_step(model, tokens, positions + i, n, retry_steps, rows, products)
        tokens = logits.argmax(dim=-1)
        out.append(tokens)
    return torch.stack(out, dim=1)


DECODE_CHUNK = 4  # greedy tokens per compiled call: measured 4 ~ 8 > 2 > 1 at batch 1 (see compile_decode)


@dataclass
class CompiledDecode:
    """What `compile_decode` installs on a model (`model.compiled_decode`): the compiled greedy chunk and
    its length; `generate` uses it for greedy chunks that fit, and the compiled `decode_step` otherwise."""

    chunk: int
    greedy: Callable


def compile_decode(model: NanoCodeGenAgent, chunk: int = DECODE_CHUNK) -> NanoCodeGenAgent:
    """Route the model's cached decoding through torch.compile (inductor, with its C++ wrapper): layer
    norms, GELUs, residual adds and cache writes fuse into a few kernels around the matrix products, and
    greedy decoding runs `chunk` tokens per call (`decode_greedy`), so Python and the graph's call
    overhead are paid once per chunk. Same tokens as the eager engine. Measured on the 2-core CPU here
    at batch 1: ~2x the eager decode rate with chunk 4 (~1.3x with chunk 1), after ~30-60 s of
    compiling on first use (inductor caches on disk; ~5 s after that). Shapes are dynamic, so growing
    contexts do not recompile. Undo with `uncompile_decode`."""
    if chunk < 1:
        raise ValueError(f"decode chunk must be at least 1, got {chunk}")
    options = {"dynamic": True, "fullgraph": True, "options": {"cpp_wrapper": True}}
    model.decode_step = torch.compile(model.decode_step, **options)
    model.prefill_padded = torch.compile(model.prefill_padded, **options)
    model.packed_step = torch.compile(model.packed_step, **options)
    greedy = functools.partial(decode_greedy, model, steps=chunk)
    model.compiled_decode = CompiledDecode(chunk, torch.compile(greedy, **options))
    return model


def uncompile_decode(model: NanoCodeGenAgent) -> NanoCodeGenAgent:
    """Back to the eager decode step (the model as loaded)."""
    model.__dict__.pop("decode_step", None)
    model.__dict__.pop("prefill_padded", None)
    model.__dict__.pop("packed_step", None)
    model.__dict__.pop("compiled_decode", None)
    return model


@torch.inference_mode()
def warm_up_decode(model: NanoCodeGenAgent, cache_rows: int = 1) -> float:
    """Run the graphs `compile_decode` installed once, so that compiling (or loading them from inductor's
    disk cache) happens here and not inside a timed run; returns the seconds it took. `cache_rows` 1 warms
    the one-sequence step and chunk (`generate`); more, the step and chunk over named rows of a cache of
    that many rows (the batched agents'), whose keys and values it leaves as junk to be overwritten."""
    compiled = getattr(model, "compiled_decode", None)
    if compiled is None:
        return 0.0
    t0 = time.perf_counter()
    model.setup_kv_cache(cache_rows)
    device = model.token_embed.weight.device
    tensor = functools.partial(torch.tensor, device=device)
    if cache_rows == 1:
        args, rows = (tensor([1]), tensor([5]), 6), None
    else:  # two named rows: every batch of two or more runs the same graph
        args, rows = (tensor([1, 2]), tensor([5, 6]), 7), tensor([0, 1])
    # The batched agents always pass retry steps to a retry-conditioned model; `generate` from attempt 2 on.
    retry_steps = [None] if model.feedback_embed is None else [torch.ones_like(args[0])] + [None] * (rows is None)
    # With a bf16 cache the batched agents decode few rows with fp32 products (`BatchedAgents._decode`): a graph each
    products = [None] if rows is None or model.decode_dtype == torch.float32 else [None, torch.float32]
    for steps in retry_steps:  # called as `generate` and `BatchedAgents._decode` call them: guards see the arguments
        if rows is None:
            compiled.greedy(*args, retry_steps=steps)
            model.decode_step(*args, steps)
            continue
        for dtype in products:
            compiled.greedy(*args, retry_steps=steps, rows=rows, products=dtype)
            model.decode_step(*args, steps, rows, dtype)
        # Two prompts (`BatchedAgents` pads a lone one with the scratch row, as for decode): packed, one after
        # a cached prefix, with the attention kernel (packed_step); else right-padded (prefill_padded)
        if model._attention_kernel:
            model.forward_rows(tensor([1, 2, 3, 4, 5]), [0, 1], [0, 4], [3, 2], None if steps is None else [0, 1])
        else:
            model.prefill_padded(tensor([[1, 2, 3], [4, 5, 6]]), rows, tensor([3, 2]),
                                 None if steps is None else tensor([0, 1]))
    return time.perf_counter() - t0


def _stopped(token: torch.Tensor, finished: torch.Tensor, stop_token: int | None) -> bool:
    """Whether every row has produced the stop token (`finished` already holds the rows' state)."""
    if stop_token is None:
        return False
    if token.size(0) == 1:  # one sync per call either way; .item() is the cheapest
        return token.item() == stop_token
    return bool(finished.all())


def _append_tokens(
    out: torch.Tensor, n: int, tokens: torch.Tensor, finished: torch.Tensor, stop_token: int | None
) -> int:
    """Write (B, k) new tokens after the n in `out`; return how many to keep: all k, or, with one row,
    up to its stop token (the rest of a greedy chunk is discarded). Rows that already stopped keep
    emitting the stop token, and `finished` is updated."""
    k = tokens.size(1)
    if stop_token is not None:
        if tokens.size(0) == 1:
            if k > 1:
                hits = (tokens[0] == stop_token).nonzero()
                k = int(hits[0]) + 1 if hits.numel() else k
        else:
            after = (tokens == stop_token).cumsum(dim=1) > 0  # (B, k): at or after the row's stop in the chunk
            before = torch.cat([torch.zeros_like(after[:, :1]), after[:, :-1]], dim=1) | finished[:, None]
            tokens = torch.where(before, torch.full_like(tokens, stop_token), tokens)
            finished |= after[:, -1]
            if bool(finished.all()) and k > 1:  # keep tokens up to the step where the last row stopped
                k = int((~before).any(dim=0).nonzero().max()) + 1
    out[:, n : n + k] = tokens[:, :k]
    return k


@torch.inference_mode()
def generate(
    model: NanoCodeGenAgent,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop_token: int | None = None,
    retry_step: int = 0,
    cache_mode: str = "attempt",
    prefix_cache: PrefixCache | None = None,
    generator: torch.Generator | None = None,
    on_first_token: Callable[[torch.Tensor], None] | None = None,
) -> Generation:
    """Generate up to `max_new_tokens` after the (B, T) `prompt`, stopping when every row has
    produced `stop_token`. With cache_mode "prefix", `prefix_cache` says what the KV cache holds
    and is updated to what it holds afterwards. `on_first_token` is called with the (B,) first
    tokens as soon as they are sampled (a load generator times the first token there)."""
    if cache_mode not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache_mode!r}; choose one of {', '.join(CACHE_MODES)}")
    B, T = prompt.shape
    max_new_tokens = min(max_new_tokens, model.max_seq_len - T)
    if max_new_tokens <= 0:
        raise ValueError(f"a prompt of {T} tokens leaves no room to generate within max_seq_len")
    device = prompt.device
    cached = 0
    if cache_mode == "prefix":
        if B != 1:
            raise ValueError("cache_mode 'prefix' tracks one sequence; use batch size 1")
        prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        cached = prefix_cache.reusable(prompt[0].tolist())
        if cached and retry_step > 0:
            raise ValueError(
                "retry-step conditioning adds a per-attempt vector to every position, so keys and values "
                "cached in an earlier attempt are stale; use cache mode 'attempt' or 'none', or a model "
                "with retry_conditioning off"
            )
    if cache_mode != "none":
        model.setup_kv_cache(B)

    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)  # generated ids, filled in order
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    _sync(device)
    t0 = time.perf_counter()
    if cache_mode == "none":
        logits = model(prompt, retry_step=retry_step)[0][:, -1]
    else:
        logits = prefill(model, prompt[:, cached:], cached, retry_step)
        positions = torch.full((B,), T, dtype=torch.long, device=device)  # where each next token goes
        retry_steps = torch.full_like(positions, retry_step) if retry_step > 0 else None
    token = sample(logits, temperature, top_k, generator)
    _sync(device)
    t1 = time.perf_counter()
    if on_first_token is not None:
        on_first_token(token)
    n = _append_tokens(out, 0, token[:, None], finished, stop_token)  # tokens in `out`; the last is not cached
    compiled = getattr(model, "compiled_decode", None)
    chunk = compiled.chunk if compiled is not None and temperature <= 0 and cache_mode != "none" else 1
    while not _stopped(token, finished, stop_token) and n < max_new_tokens:
        if chunk > 1 and n + chunk <= max_new_tokens:  # a whole greedy chunk fits in the budget (and context)
            tokens = compiled.greedy(token, positions, T + n, retry_steps=retry_steps)  # (B, chunk)
            positions += chunk
        else:
            if cache_mode == "none":
                logits = model(torch.cat([prompt, out[:, :n]], dim=1), retry_step=retry_step)[0][:, -1]
            else:
                logits = decode_one_token(model, token, positions, T + n, retry_steps)
                positions += 1
            tokens = sample(logits, temperature, top_k, generator)[:, None]  # (B, 1)
        n += _append_tokens(out, n, tokens, finished, stop_token)
        # A dense (B,) copy: a compiled step's guards check strides, and a column of `out` has stride
        # max_new_tokens, which would compile the step once per budget.
        token = out[:, n - 1].clone(memory_format=torch.contiguous_format)
    _sync(device)
    t2 = time.perf_counter()
    out = out[:, :n]
    if cache_mode == "prefix":
        # The cache now holds the prompt and every generated token but the last (never fed back).
        prefix_cache.tokens = prompt[0].tolist() + out[0, :-1].tolist()
    return Generation(
        tokens=out,
        prefill_ms=(t1 - t0) * 1e3,
        decode_ms=(t2 - t1) * 1e3,
        ttft_ms=(t1 - t0) * 1e3,
        prefill_tokens=T - cached,
        cached_tokens=cached,
    )
