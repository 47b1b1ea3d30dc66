"""Generation: sampling, prefill, one-token decode, and `generate` with three KV-cache modes.

Cache modes (what a retry costs):
- "none":    every new token recomputes the whole context: quadratic work per attempt;
- "attempt": a KV cache within an attempt; each attempt prefills its whole prompt again;
- "prefix":  the cache outlives the attempt; the next prompt prefills only the tokens after the
             longest prefix already cached (the failed attempt's tail and the feedback).
"""

from __future__ import annotations

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


def compile_decode(model: NanoCodeGenAgent) -> NanoCodeGenAgent:
    """Route the model's decode step through torch.compile (inductor): its layer norms, GELUs, residual
    adds and cache writes fuse into a few kernels around the matrix products. Same tokens; on the 2-core
    CPU here ~20-25 % less time per batch-1 token, after ~10-20 s of compiling on first use (cached on
    disk after that). Shapes are dynamic, so growing contexts do not recompile. Undo with
    `del model.decode_step`. The batched runner's packed step (`forward_rows`) is not compiled."""
    model.decode_step = torch.compile(model.decode_step, dynamic=True, fullgraph=True)
    return model


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
    n = 0
    while True:
        out[:, n] = token
        n += 1
        if stop_token is not None:
            if B == 1:  # one sync per token either way; .item() is the cheapest
                if token.item() == stop_token:
                    break
            else:
                finished |= token == stop_token
                if bool(finished.all()):
                    break
        if n >= max_new_tokens:
            break
        if cache_mode == "none":
            logits = model(torch.cat([prompt, out[:, :n]], dim=1), retry_step=retry_step)[0][:, -1]
        else:
            logits = decode_one_token(model, token, positions, T + n, retry_steps)
            positions += 1
        token = sample(logits, temperature, top_k, generator)
        if stop_token is not None and B > 1:  # rows that already stopped keep emitting the stop token
            token = torch.where(finished, torch.full_like(token, stop_token), token)
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
