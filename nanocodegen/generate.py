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


def prefill(model: NanoCodeGenAgent, ids: torch.Tensor, start_pos: int, retry_step: int = 0) -> torch.Tensor:
    """Write (B, T) prompt ids into the KV cache from `start_pos`; return the last logits (B, vocab)."""
    logits, _ = model(ids, retry_step=retry_step, start_pos=start_pos)
    return logits[:, -1]


def decode_one_token(
    model: NanoCodeGenAgent, token: torch.Tensor, pos: int, retry_step: int = 0
) -> torch.Tensor:
    """(B, 1) token at position `pos` -> next logits (B, vocab), through the KV cache."""
    logits, _ = model(token, retry_step=retry_step, start_pos=pos)
    return logits[:, -1]


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

    out = torch.empty(B, 0, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    _sync(device)
    t0 = time.perf_counter()
    if cache_mode == "none":
        logits = model(prompt, retry_step=retry_step)[0][:, -1]
    else:
        logits = prefill(model, prompt[:, cached:], cached, retry_step)
    token = sample(logits, temperature, top_k, generator)
    _sync(device)
    t1 = time.perf_counter()
    if on_first_token is not None:
        on_first_token(token)
    decode_steps = 0
    while True:
        out = torch.cat([out, token[:, None]], dim=1)
        if stop_token is not None:
            finished |= token == stop_token
            if bool(finished.all()):
                break
        if out.size(1) >= max_new_tokens:
            break
        if cache_mode == "none":
            logits = model(torch.cat([prompt, out], dim=1), retry_step=retry_step)[0][:, -1]
        else:
            logits = decode_one_token(model, token[:, None], T + out.size(1) - 1, retry_step)
        token = sample(logits, temperature, top_k, generator)
        if stop_token is not None:  # rows that already stopped keep emitting the stop token
            token = torch.where(finished, torch.full_like(token, stop_token), token)
        decode_steps += 1
    _sync(device)
    t2 = time.perf_counter()
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
