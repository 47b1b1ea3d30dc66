import pytest
import torch

from nanocodegen.model import ModelConfig, NanoCodeGenAgent


def test_sketch_constructor_and_forward_shapes():
    torch.manual_seed(0)
    model = NanoCodeGenAgent(vocab_size=101, d_model=32, n_heads=4, n_layers=2, max_seq_len=64)
    assert model.feedback_embed is not None  # the sketch's retry-step conditioning is on by default
    x = torch.randint(0, 101, (3, 10))
    logits, loss = model(x)
    assert logits.shape == (3, 10, 101) and loss is None
    logits, loss = model(x, targets=x)
    assert loss.ndim == 0 and loss.item() > 0
    # retry conditioning changes the output, as in the sketch
    assert not torch.allclose(model(x, retry_step=2)[0], logits)


def test_bare_constructor_matches_sketch_defaults():
    model = NanoCodeGenAgent()
    assert (model.vocab_size, model.d_model, model.max_seq_len) == (50257, 128, 256)
    assert len(model.layers) == 4 and model.config.n_heads == 4
    assert model.lm_head.weight is model.token_embed.weight  # tied


def test_causal_mask_future_tokens_do_not_change_past_logits(tiny_model):
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 97
    a, _ = tiny_model(x)
    b, _ = tiny_model(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_kv_cached_decode_equals_full_forward(tiny_model):
    x = torch.randint(0, 97, (2, 20))
    full, _ = tiny_model(x)
    tiny_model.setup_kv_cache(2)
    parts = [tiny_model(x[:, :7], start_pos=0)[0]]  # prefill 7
    parts.append(tiny_model(x[:, 7:12], start_pos=7)[0])  # a chunk
    for i in range(12, 20):  # then one token at a time
        parts.append(tiny_model(x[:, i : i + 1], start_pos=i)[0])
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_kv_cache_bytes_grow_linearly(tiny_model, tiny_config):
    tiny_model.setup_kv_cache(1)
    per_position = 2 * tiny_config.n_layers * tiny_config.d_model * 4  # keys + values, fp32
    assert tiny_model.kv_cache_bytes(10) == 10 * per_position
    assert tiny_model.kv_cache_bytes(20) == 2 * tiny_model.kv_cache_bytes(10)


def test_too_long_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))


def test_retry_step_needs_retry_conditioning(tiny_model):
    with pytest.raises(ValueError, match="retry_conditioning"):
        tiny_model(torch.zeros(1, 4, dtype=torch.long), retry_step=1)


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)


def test_forward_with_timing_keeps_the_sketch_dict_shape():
    torch.manual_seed(0)
    model = NanoCodeGenAgent(vocab_size=101, d_model=32, n_heads=4, n_layers=1, max_seq_len=128)
    x = torch.randint(0, 101, (4, 16))
    r = model.forward_with_timing(x, max_retries=3)
    assert set(r) == {"iterations", "total_tokens_generated", "total_ms"}
    assert [it["attempt"] for it in r["iterations"]] == [0, 1, 2]
    lengths = [it["context_length"] for it in r["iterations"]]
    assert lengths == [16, 32, 48]  # each attempt's 16 generated tokens grow the next context
    # generated tokens only: the sketch counted prompt tokens as generated
    assert r["total_tokens_generated"] == 3 * 16
    assert all(it["latency_ms"] > 0 for it in r["iterations"])


def test_decode_step_rows_at_different_positions_equal_full_forwards(tiny_model):
    # three sequences of different lengths share one cache, one row each, and step together
    seqs = [torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(n)) for n in (9, 15, 30)]
    full = [tiny_model(s)[0][0] for s in seqs]  # (T, vocab) each
    tiny_model.setup_kv_cache(3)
    prompt = [5, 11, 20]
    for row, (s, n) in enumerate(zip(seqs, prompt, strict=True)):
        tiny_model(s[:, :n], start_pos=0, cache_row=row)  # prefill each row alone
    for step in range(4):
        positions = torch.tensor([n + step for n in prompt])
        tokens = torch.stack([s[0, p] for s, p in zip(seqs, positions.tolist(), strict=True)])
        logits = tiny_model.decode_step(tokens, positions, n_keys=int(positions.max()) + 1)
        for row, p in enumerate(positions.tolist()):
            assert torch.allclose(logits[row], full[row][p], atol=1e-5)


def test_decode_step_on_named_rows_leaves_the_other_rows_alone(tiny_model):
    # rows 3 and 1 of a 4-row cache step; rows 0 and 2 hold other sequences, which must not change
    seqs = [torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(40 + r)) for r in range(4)]
    full = [tiny_model(s)[0][0] for s in seqs]  # (T, vocab) each
    tiny_model.setup_kv_cache(4)
    prompt = [6, 12, 9, 17]
    for row, (s, n) in enumerate(zip(seqs, prompt, strict=True)):
        tiny_model(s[:, :n], start_pos=0, cache_row=row)
    before = tiny_model.layers[0].attn.kv_cache.kv.clone()
    rows, positions = torch.tensor([3, 1]), torch.tensor([17, 12])
    tokens = torch.stack([seqs[r][0, p] for r, p in zip(rows.tolist(), positions.tolist(), strict=True)])
    logits = tiny_model.decode_step(tokens, positions, 18, rows=rows)
    for i, (r, p) in enumerate(zip(rows.tolist(), positions.tolist(), strict=True)):
        assert torch.allclose(logits[i], full[r][p], atol=1e-5)
    after = tiny_model.layers[0].attn.kv_cache.kv
    assert torch.equal(after[:, [0, 2]], before[:, [0, 2]])


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_compiled_decode_step_on_named_rows_equals_eager(tiny_model, dtype, atol):
    # compiled, the masked attention is written out (see decode_step); it must agree with SDPA's, in fp32
    # and with bf16 products and cache (where the two round differently)
    tiny_model.set_decode_dtype(dtype)
    try:
        step = torch.compile(tiny_model.decode_step, dynamic=True, fullgraph=True)
        tiny_model.setup_kv_cache(5)
        for row in range(5):
            tiny_model(torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(row)), start_pos=0,
                       cache_row=row)
        rows, positions, tokens = torch.tensor([4, 0, 2]), torch.tensor([20, 11, 16]), torch.tensor([1, 2, 3])
        saved = [b.attn.kv_cache.kv.clone() for b in tiny_model.layers]
        eager = tiny_model.decode_step(tokens, positions, 21, rows=rows)
        for b, kv in zip(tiny_model.layers, saved, strict=True):
            b.attn.kv_cache.kv.copy_(kv)
        assert torch.allclose(step(tokens, positions, 21, rows=rows), eager, atol=atol)
    finally:
        tiny_model.set_decode_dtype(torch.float32)


def test_decode_step_adds_retry_vectors_per_row_and_none_at_step_zero():
    torch.manual_seed(0)
    model = NanoCodeGenAgent(vocab_size=50, d_model=16, n_heads=2, n_layers=1, max_seq_len=32).eval()
    x = torch.randint(0, 50, (1, 8))
    model.setup_kv_cache(2)
    for row in range(2):
        model(x[:, :7], retry_step=row, start_pos=0, cache_row=row)
    logits = model.decode_step(x[0, 7].repeat(2), torch.tensor([7, 7]), 8, retry_steps=torch.tensor([0, 1]))
    assert torch.allclose(logits[0], model(x)[0][0, -1], atol=1e-5)
    assert torch.allclose(logits[1], model(x, retry_step=1)[0][0, -1], atol=1e-5)


def test_cache_row_needs_a_single_sequence(tiny_model):
    tiny_model.setup_kv_cache(2)
    with pytest.raises(RuntimeError, match="cache_row"):
        tiny_model(torch.zeros(2, 3, dtype=torch.long), start_pos=0, cache_row=0)


def test_decode_path_follows_weight_changes(tiny_model):
    # the decode step reads (in, out) copies of the linear weights; changed weights must be re-copied
    x = torch.randint(0, 97, (1, 6))
    tiny_model.setup_kv_cache(1)
    with torch.no_grad():
        tiny_model.layers[0].mlp[0].weight.mul_(2)
    tiny_model.setup_kv_cache(1)
    tiny_model(x[:, :5], start_pos=0)
    step = tiny_model.decode_step(x[:, 5], torch.tensor([5]), 6)
    assert torch.allclose(step[0], tiny_model(x)[0][0, -1], atol=1e-5)


def test_bf16_decode_dtype_keeps_bf16_keys_and_stays_close_to_fp32(tiny_model):
    seqs = [torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(60 + r)) for r in range(2)]
    full = [tiny_model(s)[0][0] for s in seqs]  # (T, vocab) fp32 references
    tiny_model.set_decode_dtype(torch.bfloat16)
    try:
        tiny_model.setup_kv_cache(2)
        assert tiny_model.layers[0].attn.kv_cache.flat.dtype == torch.bfloat16
        prompt = [7, 12]
        for row, (s, n) in enumerate(zip(seqs, prompt, strict=True)):
            tiny_model(s[:, :n], start_pos=0, cache_row=row)  # fp32 products, bf16 cache
        positions = torch.tensor(prompt)
        tokens = torch.stack([s[0, p] for s, p in zip(seqs, prompt, strict=True)])
        step = tiny_model.decode_step(tokens, positions, 13)
        packed = tiny_model.forward_rows(torch.cat([s[0, : n + 1] for s, n in zip(seqs, prompt, strict=True)]),
                                         [0, 1], [0, 0], [n + 1 for n in prompt])
        for logits in (step, packed):
            for row, p in enumerate(prompt):
                reference = full[row][p]
                assert logits.dtype == torch.float32
                assert not torch.equal(logits[row], reference)  # bf16 is really in use
                assert (logits[row] - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3
    finally:
        tiny_model.set_decode_dtype(torch.float32)
    tiny_model.setup_kv_cache(1)
    assert tiny_model.layers[0].attn.kv_cache.flat.dtype == torch.float32


def test_decode_dtype_is_fp32_or_bf16(tiny_model):
    with pytest.raises(ValueError, match="bfloat16"):
        tiny_model.set_decode_dtype(torch.float16)


def test_prefill_padded_equals_full_forwards_and_leaves_rows_ready_to_decode(tiny_model):
    # three prompts of different lengths, right-padded into one call on rows 3, 0 and 2 of a 5-row cache
    seqs = [torch.randint(0, 97, (1, n + 1), generator=torch.Generator().manual_seed(80 + n)) for n in (9, 15, 4)]
    full = [tiny_model(s)[0][0] for s in seqs]  # (T, vocab) each
    tiny_model.setup_kv_cache(5)
    lengths = torch.tensor([9, 15, 4])
    padded = torch.zeros(3, 15, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lengths.tolist(), strict=True)):
        padded[i, :n] = s[0, :n]
    rows = torch.tensor([3, 0, 2])
    logits = tiny_model.prefill_padded(padded, rows, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert torch.allclose(logits[i], full[i][n - 1], atol=1e-5)
    # the padding wrote past each prompt; the next decode step, at the prompt's end, must not see it
    step = tiny_model.decode_step(torch.stack([s[0, n] for s, n in zip(seqs, lengths.tolist(), strict=True)]),
                                  lengths, 16, rows=rows)
    for i, n in enumerate(lengths.tolist()):
        assert torch.allclose(step[i], full[i][n], atol=1e-5)
