import math
import subprocess
import sys

import pytest
import torch

from nanocodegen import kernels
from nanocodegen.generate import compile_decode, uncompile_decode
from nanocodegen.model import ModelConfig, NanoCodeGenAgent

pytestmark = pytest.mark.skipif(not kernels.load(), reason=f"kernel: {kernels.status()}")


def reference_attention(q, kv, rows, lengths, scale):
    """Row by row with the textbook softmax: (R, H, D) queries over a (2, B, H, L, D) cache."""
    out = []
    for r, n in zip(rows.tolist(), lengths.tolist(), strict=True):
        k, v = kv[0, r, :, :n].float(), kv[1, r, :, :n].float()  # (H, n, D)
        weights = torch.softmax(torch.einsum("hd,hnd->hn", q[len(out)], k) * scale, dim=-1)
        out.append(torch.einsum("hn,hnd->hd", weights, v))
    return torch.stack(out)


@pytest.mark.parametrize("dtype, head_dim", [(torch.float32, 32), (torch.bfloat16, 32), (torch.float32, 64)])
def test_kernel_equals_the_textbook_attention_over_each_rows_own_length(dtype, head_dim):
    g = torch.Generator().manual_seed(0)
    B, H, L = 6, 3, 40
    kv = torch.randn(2, B, H, L, head_dim, generator=g).to(dtype)
    rows = torch.tensor([4, 0, 5, 2, 1])  # not in order; row 3 is not read
    lengths = torch.tensor([1, 40, 17, 33, 2])  # one key, and the whole row
    q = torch.randn(5, H, head_dim, generator=g)
    scale = 1 / math.sqrt(head_dim)
    got = kernels.decode_attention(q, kv, rows, lengths, scale)
    assert got.dtype == torch.float32 and got.shape == (5, H, head_dim)
    assert torch.allclose(got, reference_attention(q, kv, rows, lengths, scale), atol=1e-5)
    kv[:, 3] = float("nan")  # what lies outside the named rows and lengths is never read
    kv[:, 1, :, 2:] = float("nan")
    assert torch.equal(kernels.decode_attention(q, kv, rows, lengths, scale), got)


@pytest.mark.parametrize("rows, lengths, message", [
    ([0, 7], [3, 3], "row 7 is outside"), ([0, -1], [3, 3], "row -1 is outside"),
    ([0, 1], [0, 3], "length 0 is outside"), ([0, 1], [3, 41], "length 41 is outside"),
])  # fmt: skip
def test_kernel_refuses_indices_outside_the_cache(rows, lengths, message):
    kv, q = torch.zeros(2, 2, 1, 40, 32), torch.zeros(2, 1, 32)
    with pytest.raises(RuntimeError, match=message):
        kernels.decode_attention(q, kv, torch.tensor(rows), torch.tensor(lengths), 1.0)


def test_kernel_takes_whole_vectors_of_head_dim_only():
    width = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8
    assert kernels.supports(width) and kernels.supports(2 * width)
    assert not kernels.supports(width + 1) and not kernels.supports(17 * width)
    with pytest.raises(RuntimeError, match="head_dim must be a multiple"):
        kernels.decode_attention(torch.zeros(1, 1, width + 1), torch.zeros(2, 1, 1, 4, width + 1),
                                          torch.tensor([0]), torch.tensor([1]), 1.0)


@pytest.fixture
def kernel_model() -> NanoCodeGenAgent:
    """A small model whose heads the kernel takes (head_dim 32)."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, d_model=64, n_heads=2, n_layers=2, max_seq_len=64, retry_conditioning=False)
    return NanoCodeGenAgent.from_config(config).eval()


def prefilled(model, lengths):
    """Rows of the model's cache, each holding a random prompt of its length; returns the sequences."""
    seqs = [torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(r)) for r in range(len(lengths))]
    model.setup_kv_cache(len(lengths))
    for row, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        model(s[:, :n], start_pos=0, cache_row=row)
    return seqs


@torch.inference_mode()
def test_decode_step_through_the_kernel_equals_full_forwards_and_the_tensor_op_attention(kernel_model):
    seqs = prefilled(kernel_model, [6, 12, 9, 17])
    assert kernel_model._attention_kernel
    full = [kernel_model(s)[0][0] for s in seqs]  # (T, vocab) each
    rows, positions = torch.tensor([3, 1, 0]), torch.tensor([17, 12, 6])
    tokens = torch.stack([seqs[r][0, p] for r, p in zip(rows.tolist(), positions.tolist(), strict=True)])
    saved = [b.attn.kv_cache.kv.clone() for b in kernel_model.layers]
    logits = kernel_model.decode_step(tokens, positions, 18, rows=rows)
    for i, (r, p) in enumerate(zip(rows.tolist(), positions.tolist(), strict=True)):
        assert torch.allclose(logits[i], full[r][p], atol=1e-5)
    for b, kv in zip(kernel_model.layers, saved, strict=True):
        b.attn.kv_cache.kv.copy_(kv)
    kernel_model._attention_kernel = False
    assert torch.allclose(kernel_model.decode_step(tokens, positions, 18, rows=rows), logits, atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@torch.inference_mode()
def test_compiled_decode_step_calls_the_kernel_and_equals_eager(kernel_model, dtype, atol):
    kernel_model.set_decode_dtype(dtype)
    prefilled(kernel_model, [20, 11, 16, 3])
    rows, positions, tokens = torch.tensor([3, 0, 2]), torch.tensor([3, 20, 16]), torch.tensor([1, 2, 3])
    saved = [b.attn.kv_cache.kv.clone() for b in kernel_model.layers]
    eager = kernel_model.decode_step(tokens, positions, 21, rows=rows)
    for b, kv in zip(kernel_model.layers, saved, strict=True):
        b.attn.kv_cache.kv.copy_(kv)
    compile_decode(kernel_model)  # as the batched agents run it (inductor's C++ wrapper)
    try:
        for products in (None, torch.float32):  # fp32 products, as for few rows of a bf16 cache
            kernel_model.decode_step(tokens, positions, 21, None, rows, products)  # compiles
            for b, kv in zip(kernel_model.layers, saved, strict=True):
                b.attn.kv_cache.kv.copy_(kv)
            with torch.profiler.profile() as profile:
                compiled = kernel_model.decode_step(tokens, positions, 21, None, rows, products)
            assert torch.allclose(compiled, eager, atol=atol)
            calls = [e for e in profile.events() if e.name == "nanocodegen::decode_attention"]
            assert len(calls) == len(kernel_model.layers)
    finally:
        uncompile_decode(kernel_model)
        torch._dynamo.reset()  # its graphs would count towards later tests' recompile limit


def test_a_kernel_that_cannot_be_built_warns_once_and_the_model_falls_back(monkeypatch, kernel_model):
    # a scripted stand-in for a failed build (no compiler): the reason _build would return
    monkeypatch.setattr(kernels, "_build", lambda: "CalledProcessError: g++: not found")
    kernels._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="pip install ninja"):
        assert not kernels.load()
    assert kernels.status().startswith("unavailable (CalledProcessError")
    kernel_model.setup_kv_cache(2)
    assert not kernel_model._attention_kernel
    out = kernel_model.decode_step(torch.tensor([1, 2]), torch.tensor([0, 0]), 1, rows=torch.tensor([1, 0]))
    assert out.shape == (2, 97)


def test_the_kernel_can_be_turned_off():
    code = ("from nanocodegen import kernels as k; import warnings; warnings.simplefilter('error'); "
            "print(k.load(), k.status())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, kernels.DISABLE_VARIABLE: "0"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"False unavailable (turned off by {kernels.DISABLE_VARIABLE}=0)"


@torch.inference_mode()
def test_packed_rows_through_the_kernel_equal_full_forwards_and_the_per_row_attention(kernel_model):
    # row 2 resumes after a cached prefix of 5 with 7 tokens, row 0 decodes one token, row 1 starts from 0
    seqs = prefilled(kernel_model, [9, 1, 5])
    full = [kernel_model(s)[0][0] for s in seqs]  # (T, vocab) each
    rows, starts, counts = [2, 0, 1], [5, 9, 0], [7, 1, 12]
    tokens = torch.cat([seqs[r][0, s : s + c] for r, s, c in zip(rows, starts, counts, strict=True)])
    saved = [b.attn.kv_cache.kv.clone() for b in kernel_model.layers]
    logits = kernel_model.forward_rows(tokens, rows, starts, counts)  # (3, vocab): each row's last token
    for i, (r, s, c) in enumerate(zip(rows, starts, counts, strict=True)):
        assert torch.allclose(logits[i], full[r][s + c - 1], atol=1e-5)
    for b, kv in zip(kernel_model.layers, saved, strict=True):
        b.attn.kv_cache.kv.copy_(kv)
    kernel_model._attention_kernel = False
    assert torch.allclose(kernel_model.forward_rows(tokens, rows, starts, counts), logits, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])  # one compiled loop per token count
@pytest.mark.parametrize("with_bias", [True, False])
def test_stream_linear_equals_addmm(rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(rows, 256, generator=g), torch.randn(300, 256, generator=g)
    bias = torch.randn(300, generator=g)
    got = kernels.stream_linear(x, weight, bias if with_bias else None)
    want = x @ weight.t() + (bias if with_bias else 0)
    assert got.shape == (rows, 300) and torch.allclose(got, want, atol=1e-4)


def test_stream_linear_refuses_what_it_does_not_serve():
    with pytest.raises(RuntimeError, match="1 <= R <= 4"):
        kernels.stream_linear(torch.zeros(5, 256), torch.zeros(8, 256), None)
    with pytest.raises(RuntimeError, match="in must be a multiple"):
        kernels.stream_linear(torch.zeros(1, 200), torch.zeros(8, 200), None)
    assert kernels.streams(torch.zeros(1024, 256)) and not kernels.streams(torch.zeros(1023, 256))  # 1 MiB
    assert not kernels.streams(torch.zeros(1024, 256, dtype=torch.bfloat16))


@pytest.fixture
def big_model() -> NanoCodeGenAgent:
    """d_model 512: every linear layer's weight is 1 MiB or more."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, d_model=512, n_heads=4, n_layers=1, max_seq_len=32, retry_conditioning=False)
    return NanoCodeGenAgent.from_config(config).eval()


@torch.inference_mode()
def test_batch_one_decode_streams_big_weights_and_equals_the_full_forward(big_model):
    model = big_model
    seq = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    full = model(seq)[0][0]  # (T, vocab)
    model.setup_kv_cache(1)
    model(seq[:, :11], start_pos=0, cache_row=0)
    with torch.profiler.profile() as profile:
        logits = model.decode_step(seq[0, 11:], torch.tensor([11]), 12)
    assert torch.allclose(logits[0], full[11], atol=1e-4)
    calls = [e for e in profile.events() if e.name == "nanocodegen::stream_linear"]
    assert len(calls) == 4  # qkv, proj, fc, out; the LM head (97 x 512) is too small to stream
    # a lone sequence attends through the kernel too (eagerly), not SDPA
    assert [e.name for e in profile.events()].count("nanocodegen::decode_attention") == 1


@torch.inference_mode()
def test_compiled_batch_one_decode_streams_big_weights_and_equals_eager(big_model):
    model = big_model
    seq = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    model.setup_kv_cache(1)
    model(seq[:, :11], start_pos=0, cache_row=0)
    saved = model.layers[0].attn.kv_cache.kv.clone()
    eager = model.decode_step(seq[0, 11:], torch.tensor([11]), 12)
    compile_decode(model)
    try:
        model.layers[0].attn.kv_cache.kv.copy_(saved)
        model.decode_step(seq[0, 11:], torch.tensor([11]), 12)  # compiles
        model.layers[0].attn.kv_cache.kv.copy_(saved)
        with torch.profiler.profile() as profile:
            compiled = model.decode_step(seq[0, 11:], torch.tensor([11]), 12)
        assert torch.allclose(compiled, eager, atol=1e-4)
        calls = [e for e in profile.events() if e.name == "nanocodegen::stream_linear"]
        assert len(calls) == 4  # an opaque op in the compiled graph
    finally:
        uncompile_decode(model)
        torch._dynamo.reset()  # its graphs would count towards later tests' recompile limit


def test_a_streamed_lm_head_stays_out_of_the_state_dict():
    # the head is 1024 x 512 fp32 (2 MiB): streamed; its reference must not register as a parameter
    config = ModelConfig(vocab_size=1024, d_model=512, n_heads=4, n_layers=1, max_seq_len=16, retry_conditioning=False)
    model = NanoCodeGenAgent.from_config(config).eval()
    keys = set(model.state_dict())
    model.setup_kv_cache(1)
    assert model._streamed_head is not None
    assert set(model.state_dict()) == keys
    NanoCodeGenAgent.from_config(config).load_state_dict(model.state_dict())  # strict: no unexpected keys
