import functools

import pytest
import torch

from nanocodegen.generate import (
    CompiledDecode,
    PrefixCache,
    _append_tokens,
    compile_decode,
    decode_greedy,
    generate,
    sample,
    uncompile_decode,
)
from nanocodegen.model import NanoCodeGenAgent


def test_greedy_is_argmax_and_top_k_restricts():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert sample(logits).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, temperature=1.0, top_k=2, generator=g).item() for _ in range(50)}
    assert draws <= {1, 3} and len(draws) == 2


@pytest.mark.parametrize("mode", ["none", "attempt", "prefix"])
def test_cache_modes_generate_identical_tokens(tiny_model, mode):
    prompt = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    reference = generate(tiny_model, prompt, 20, cache_mode="none").tokens
    assert torch.equal(generate(tiny_model, prompt, 20, cache_mode=mode).tokens, reference)


def test_prefix_cache_reuses_the_previous_attempt(tiny_model):
    cache = PrefixCache()
    prompt = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))
    first = generate(tiny_model, prompt, 8, cache_mode="prefix", prefix_cache=cache)
    assert first.cached_tokens == 0 and first.prefill_tokens == 10
    # the next prompt extends the previous one with the generated tokens and some feedback
    grown = torch.cat([prompt, first.tokens, torch.tensor([[5, 6, 7]])], dim=1)
    second = generate(tiny_model, grown, 8, cache_mode="prefix", prefix_cache=cache)
    assert second.cached_tokens == 10 + 8 - 1  # the last generated token was never fed to the model
    assert second.prefill_tokens == grown.size(1) - second.cached_tokens
    fresh = generate(tiny_model, grown, 8, cache_mode="none")
    assert torch.equal(second.tokens, fresh.tokens)


def test_stop_token_ends_generation(tiny_model):
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    free = generate(tiny_model, prompt, 10).tokens[0].tolist()
    stop = free[3]
    stopped = generate(tiny_model, prompt, 10, stop_token=stop).tokens[0].tolist()
    assert stopped == free[: free.index(stop) + 1]


def test_generation_is_bounded_by_the_context(tiny_model):
    prompt = torch.zeros(1, 60, dtype=torch.long)
    assert generate(tiny_model, prompt, 50).tokens.size(1) == 4  # max_seq_len 64
    with pytest.raises(ValueError, match="no room"):
        generate(tiny_model, torch.zeros(1, 64, dtype=torch.long), 5)


def test_prefix_mode_refuses_stale_retry_conditioning():
    torch.manual_seed(0)
    model = NanoCodeGenAgent(vocab_size=50, d_model=16, n_heads=2, n_layers=1, max_seq_len=64).eval()
    cache = PrefixCache()
    prompt = torch.randint(0, 50, (1, 5))
    out = generate(model, prompt, 4, cache_mode="prefix", prefix_cache=cache)
    grown = torch.cat([prompt, out.tokens], dim=1)
    with pytest.raises(ValueError, match="stale"):
        generate(model, grown, 4, cache_mode="prefix", prefix_cache=cache, retry_step=1)
    # the other modes support retry conditioning
    generate(model, grown, 4, cache_mode="attempt", retry_step=1)


def test_retry_conditioned_cached_decode_equals_uncached():
    torch.manual_seed(0)
    model = NanoCodeGenAgent(vocab_size=50, d_model=16, n_heads=2, n_layers=2, max_seq_len=64).eval()
    prompt = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(4))
    for step in (0, 3):
        reference = generate(model, prompt, 12, cache_mode="none", retry_step=step).tokens
        assert torch.equal(generate(model, prompt, 12, cache_mode="attempt", retry_step=step).tokens, reference)


def test_batched_rows_stop_independently(tiny_model):
    prompts = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(5))
    free = [generate(tiny_model, p[None], 10).tokens[0].tolist() for p in prompts]
    stop = free[0][2]
    out = generate(tiny_model, prompts, 10, stop_token=stop).tokens.tolist()
    for row, tokens in zip(out, free, strict=True):
        n = tokens.index(stop) + 1 if stop in tokens else len(tokens)
        assert row[:n] == tokens[:n] and all(t == stop for t in row[n:])


def eager_chunks(model, chunk):
    """compile_decode's greedy chunks without the compiler (the same function, run eagerly): tests the
    chunk bookkeeping in seconds."""
    model.compiled_decode = CompiledDecode(chunk, functools.partial(decode_greedy, model, steps=chunk))
    return model


@pytest.mark.parametrize("chunk", [2, 3, 5])
def test_greedy_chunks_stop_where_single_steps_stop(tiny_model, chunk):
    prompt = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(8))
    free = generate(tiny_model, prompt, 20).tokens[0].tolist()
    stop = free[6]  # inside a chunk for every chunk size here
    stopped = generate(tiny_model, prompt, 20, stop_token=stop).tokens[0].tolist()
    rows = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(5))
    row_stop = generate(tiny_model, rows[:1], 11).tokens[0, 1].item()  # row 0 stops in the first chunk
    batched = generate(tiny_model, rows, 11, stop_token=row_stop).tokens
    assert (batched[0, 2:] == row_stop).all() and not (batched[1:] == row_stop).all()
    eager_chunks(tiny_model, chunk)
    try:
        assert generate(tiny_model, prompt, 20).tokens[0].tolist() == free
        assert generate(tiny_model, prompt, 20, stop_token=stop).tokens[0].tolist() == stopped
        assert torch.equal(generate(tiny_model, rows, 11, stop_token=row_stop).tokens, batched)
    finally:
        uncompile_decode(tiny_model)


def test_chunk_bookkeeping_over_rows_that_stop_at_different_steps():
    # row 0 stopped in an earlier chunk (its chunk tokens are whatever the model made of the stop token),
    # row 1 stops at step 1, row 2 at step 0 of this chunk: kept up to step 1, stop tokens after each stop
    out = torch.zeros(3, 8, dtype=torch.long)
    finished = torch.tensor([True, False, False])
    kept = _append_tokens(out, 2, torch.tensor([[4, 5, 6], [7, 9, 8], [9, 2, 3]]), finished, stop_token=9)
    assert kept == 2 and finished.all()
    assert out[:, 2:4].tolist() == [[9, 9], [7, 9], [9, 9]]
    finished = torch.tensor([True, False])  # no row stops in the chunk: all of it is kept
    kept = _append_tokens(out[:2], 0, torch.tensor([[4, 5, 6], [1, 2, 3]]), finished, stop_token=9)
    assert kept == 3 and out[:2, :3].tolist() == [[9, 9, 9], [1, 2, 3]] and finished.tolist() == [True, False]


def test_greedy_chunks_keep_the_prefix_cache_exact(tiny_model):
    # a chunk writes keys past the stop token; the next attempt must still reuse only what is right
    prompt = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))
    stop = generate(tiny_model, prompt, 12).tokens[0, 4].item()
    eager_chunks(tiny_model, 4)
    try:
        cache = PrefixCache()
        first = generate(tiny_model, prompt, 12, stop_token=stop, cache_mode="prefix", prefix_cache=cache)
        assert first.tokens[0, -1].item() == stop and len(cache.tokens) == 10 + first.tokens.size(1) - 1
        grown = torch.cat([prompt, first.tokens, torch.tensor([[5, 6, 7]])], dim=1)
        second = generate(tiny_model, grown, 12, cache_mode="prefix", prefix_cache=cache)
        assert second.cached_tokens == 10 + first.tokens.size(1) - 1
        assert torch.equal(second.tokens, generate(tiny_model, grown, 12, cache_mode="none").tokens)
    finally:
        uncompile_decode(tiny_model)


def test_compiled_decode_generates_the_same_tokens(tiny_model):
    prompt = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(6))
    reference = generate(tiny_model, prompt, 20).tokens
    stop = reference[0, 9].item()
    stopped = generate(tiny_model, prompt, 20, stop_token=stop).tokens
    compile_decode(tiny_model, chunk=4)
    try:
        assert torch.equal(generate(tiny_model, prompt, 20).tokens, reference)
        assert torch.equal(generate(tiny_model, prompt, 20, stop_token=stop).tokens, stopped)
    finally:
        uncompile_decode(tiny_model)
    with pytest.raises(ValueError, match="at least 1"):
        compile_decode(tiny_model, chunk=0)
