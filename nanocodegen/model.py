"""The transformer: a GPT-style decoder with fused QKV, SDPA attention and an explicit KV cache.

Same architecture as the original sketch (token + learned position embeddings, pre-LayerNorm blocks,
GELU MLP, final LayerNorm, LM head, optional retry-step conditioning), with tied embeddings and a
KV cache for incremental decoding. No I/O, training or CLI code lives here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanocodegen import kernels

# Measured on this CPU (bf16 cache, compiled step over 4-32 rows): below ~24 rows, fp32 products beat bf16
# ones, whose oneDNN set-up (~20 us a product) outweighs their speed. The batched agents pick by this.
BF16_MIN_ROWS = 24


@dataclass
class ModelConfig:
    vocab_size: int = 50257
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    max_seq_len: int = 256
    dropout: float = 0.0
    # The sketch's `feedback_embed`: a learned vector per retry step, added to every position.
    # It changes the input of *all* positions when the retry step changes, so it cannot be combined
    # with a KV cache that survives across attempts.
    retry_conditioning: bool = True
    max_retry_steps: int = 16

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """SDPA over cached keys and values, in the cache's dtype (bf16 after `set_decode_dtype`), the result
    back in the queries' dtype."""
    return F.scaled_dot_product_attention(q.to(k.dtype), k, v, **kwargs).to(q.dtype)


class KVCache(nn.Module):
    """Preallocated keys and values for one attention layer, one row per sequence (a "slot").

    One buffer `kv` of shape (2, B, n_heads, max_seq_len, head_dim) holds keys ([0]) and values ([1]),
    so that a decode step writes both with one `index_copy_`, and so that each of `k`, `v` is contiguous
    over (B, n_heads): attention over B rows then reads one dense block per head instead of strided ones.
    Each row has its own length: `update(start, k, v, row)` writes positions [start, start + T) of one row
    (or of all rows) and returns the keys/values of positions [0, start + T); `write_rows(index, kv)`
    writes one new position per row at per-row positions (the index comes from `row_offsets`).
    Positions past a write are left as they are; callers roll back simply by writing from an earlier
    position, and a row's stale tail is never attended to because attention masks keys past each
    query's position.
    """

    def __init__(self, batch_size: int, max_seq_len: int, n_heads: int, head_dim: int, dtype, device):
        super().__init__()
        self.shape = (2, batch_size, n_heads, max_seq_len, head_dim)
        # Stored flat, one head_dim vector per row, and written only as that tensor: a compiled step
        # then updates it in place, where a write through a view makes inductor copy the whole buffer.
        self.register_buffer("flat", torch.zeros(math.prod(self.shape[:-1]), head_dim, dtype=dtype, device=device),
                             persistent=False)

    # Views are made on use, not stored: a compiled step then sees one buffer and updates it in place.
    @property
    def kv(self) -> torch.Tensor:
        return self.flat.view(self.shape)  # (2, B, n_heads, max_seq_len, head_dim)

    @property
    def k(self) -> torch.Tensor:
        return self.kv[0]  # (B, n_heads, max_seq_len, head_dim)

    @property
    def v(self) -> torch.Tensor:
        return self.kv[1]

    def update(
        self, start: int, k: torch.Tensor, v: torch.Tensor, row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.size(2)
        rows = slice(None) if row is None else slice(row, row + 1)
        kv = self.kv
        kv[0, rows, :, start:end] = k
        kv[1, rows, :, start:end] = v
        return kv[0, rows, :, :end], kv[1, rows, :, :end]

    def write_rows(self, index: torch.Tensor, kv: torch.Tensor) -> None:
        """Write (2, B, n_heads, head_dim) new keys/values at the flat `index` (2 * B * n_heads,)."""
        self.flat.index_copy_(0, index, kv.reshape(-1, kv.size(-1)).to(self.flat.dtype))

    def bytes_used(self, length: int) -> int:
        """Bytes holding the first `length` positions' keys and values of one sequence."""
        two, _, h, _, d = self.shape  # (not self.kv: a view per call, ~0.1 ms a record in a batched run)
        return two * h * length * d * self.flat.element_size()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # fused q, k, v projections
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start_pos: int | None = None, cache_row: int | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        if start_pos is None:  # no cache: plain causal attention over the T positions given
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v = self.kv_cache.update(start_pos, k, v, cache_row)  # (B, n_heads, start_pos + T, head_dim)
            if T == 1:  # one new token attends to everything cached: no mask needed
                y = cached_attention(q, k, v)
            else:  # query i sits at position start_pos + i and may see keys 0 .. start_pos + i
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(start_pos)
                y = cached_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, start_pos: int | None = None, cache_row: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), start_pos, cache_row)
        return x + self.mlp(self.ln_2(x))


class NanoCodeGenAgent(nn.Module):
    """The code-generating model.

    The constructor and `forward` keep the original sketch's signatures: the bare constructor builds
    the sketch's model (retry-step conditioning included); `from_config` builds any configuration.
    """

    def __init__(
        self,
        vocab_size: int = 50257,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        max_seq_len: int = 256,
        *,
        config: ModelConfig | None = None,
    ):
        super().__init__()
        if config is None:
            config = ModelConfig(vocab_size, d_model, n_heads, n_layers, max_seq_len)
        self.config = cfg = config
        self.vocab_size, self.d_model, self.max_seq_len = cfg.vocab_size, cfg.d_model, cfg.max_seq_len
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.token_embed.weight  # tied embeddings
        self.feedback_embed = (
            nn.Embedding(cfg.max_retry_steps, cfg.d_model) if cfg.retry_conditioning else None
        )
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.cache_batch_size = 0
        self.decode_dtype = torch.float32  # of the cached steps' matrix products and KV cache (set_decode_dtype)

    @classmethod
    def from_config(cls, config: ModelConfig) -> NanoCodeGenAgent:
        return cls(config=config)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- KV cache -------------------------------------------------------------------------------
    def setup_kv_cache(self, batch_size: int = 1, dtype: torch.dtype | None = None) -> None:
        """Install a preallocated KV cache in every layer (idempotent for the same batch size)."""
        first = self.layers[0].attn.kv_cache
        # Buffers made under inference_mode cannot be written outside it (and vice versa is wasteful).
        if (
            first is not None
            and self.cache_batch_size == batch_size
            and first.kv.is_inference() == torch.is_inference_mode_enabled()
            and first.flat.dtype == (dtype or self.decode_dtype)
        ):
            self._pack_decode_weights()  # weights may have changed since the cache was installed
            return
        ref = self.token_embed.weight
        cfg = self.config
        for block in self.layers:
            block.attn.kv_cache = KVCache(
                batch_size, self.max_seq_len, cfg.n_heads, cfg.head_dim, dtype or self.decode_dtype, ref.device,
            )
        self.cache_batch_size = batch_size
        self._pack_decode_weights()
        # Constants of the decode step: key positions, and each (k/v, row, head)'s offset in the flat buffer.
        # Buffers, not plain attributes, so that a compiled step takes their shapes as fixed.
        self.register_buffer("_key_positions", torch.arange(self.max_seq_len, device=ref.device),  # (L,)
                             persistent=False)
        rows = torch.arange(2 * batch_size * cfg.n_heads, device=ref.device)
        self.register_buffer("_row_offsets", (rows * self.max_seq_len).view(2, batch_size, cfg.n_heads),
                             persistent=False)  # (2, B, n_heads)
        self.register_buffer("_cache_rows", torch.arange(batch_size, device=ref.device), persistent=False)  # (B,)
        self._attn_scale = 1.0 / math.sqrt(cfg.head_dim)
        # The batched decode step's attention kernel, where it builds (CPU only; see kernels.py).
        self._attention_kernel = ref.device.type == "cpu" and kernels.supports(cfg.head_dim)

    def _pack_decode_weights(self) -> None:
        """(in, out) copies of the linear layers' weights for the cached steps, made again whenever a
        weight has changed (its storage or version counter). A one-token matrix-vector product streams
        the weight from memory; laid out (in, out), as GPT-2's Conv1D keeps it, it streams ~1.4x faster
        here than nn.Linear's (out, in). Costs one more copy of the linear weights, two in bf16 (an fp32
        copy serves decode steps over few rows, see `_decode_layers`)."""
        linears = [m for b in self.layers for m in (b.attn.qkv, b.attn.proj, b.mlp[0], b.mlp[2])]
        tensors = [t for m in linears for t in (m.weight, m.bias)] + [self.lm_head.weight]
        key = [(t.data_ptr(), t._version) for t in tensors] + [self.decode_dtype]
        if key != getattr(self, "_packed_key", None):
            self._packed = {}  # dtype -> per layer (qkv, proj, fc, out) (weight, bias) pairs
            with torch.no_grad():  # the LM head stays fp32: greedy picks the argmax of its logits
                for dtype in {torch.float32, self.decode_dtype}:
                    packed = [(m.weight.t().contiguous().to(dtype), m.bias.to(dtype)) for m in linears]
                    self._packed[dtype] = [packed[i : i + 4] for i in range(0, len(packed), 4)]
                self._packed_head = self.lm_head.weight.t().contiguous()
            # The weights too big for the caches, read as they are, (out, in), by kernels.stream_linear in
            # steps of one to four tokens, eager or compiled (see _decode_layers); None where the (in, out)
            # copy serves.
            streamed = [(m.weight, m.bias) if kernels.streams(m.weight) else None for m in linears]
            self._streamed = [streamed[i : i + 4] for i in range(0, len(streamed), 4)]
            # (detached: a Parameter set as an attribute would register as one, and join the state dict)
            head = self.lm_head.weight.detach()
            self._streamed_head = head if kernels.streams(head) else None
            self._any_streamed = self._streamed_head is not None or any(s is not None for s in streamed)
            self._packed_key = key

    def set_decode_dtype(self, dtype: torch.dtype) -> None:
        """The dtype of the cached steps' matrix products and of the KV cache: torch.float32 (the default)
        or torch.bfloat16. In bf16 the linear layers' inputs and weights are rounded to bf16 (the products
        accumulate in fp32; the default model was trained under bf16 autocast on a CPU with bf16 units)
        and keys and values are stored in bf16, so attention reads half the bytes; layer norms, softmax,
        the residual stream and the LM head stay fp32. `decode_step` and `forward_rows` (the batched
        agents' steps) use it; `forward` keeps fp32 products and attends in the cache's dtype. On CPUs
        with bf16 units it pays for many rows at once (batched agents) and costs at batch 1, where a
        bf16 matrix-vector product is slower than fp32's. Greedy tokens may differ from fp32's where two
        logits nearly tie. The cache is reinstalled at the next `setup_kv_cache`."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"decode dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        if dtype != self.decode_dtype:
            self.decode_dtype = dtype
            self.clear_kv_cache()

    def clear_kv_cache(self) -> None:
        for block in self.layers:
            block.attn.kv_cache = None
        self.cache_batch_size = 0

    def kv_cache_bytes(self, length: int) -> int:
        """Bytes of keys and values held for one sequence of `length` cached positions, over all layers."""
        return sum(b.attn.kv_cache.bytes_used(length) for b in self.layers if b.attn.kv_cache is not None)

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        retry_step: int = 0,
        start_pos: int | None = None,
        cache_row: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) token ids -> ((B, T, vocab) logits, loss or None).

        `targets` (B, T) uses -100 for positions that carry no loss (prompt and feedback tokens).
        `start_pos`: None runs without a cache; an int writes the T positions into the installed KV
        cache starting there and attends to everything cached before them. `cache_row` (with B == 1)
        reads and writes that one row of a cache installed for more sequences (a prefill of one slot).
        """
        B, T = input_ids.shape
        first = 0 if start_pos is None else start_pos
        if first + T > self.max_seq_len:
            raise ValueError(
                f"sequence of {first + T} tokens exceeds the model's max_seq_len ({self.max_seq_len}); "
                "shorten the prompt or use a model with a longer context"
            )
        if start_pos is not None:
            if cache_row is None and self.cache_batch_size != B:
                raise RuntimeError(f"call setup_kv_cache({B}) before a cached forward with batch size {B}")
            if cache_row is not None and not (B == 1 and 0 <= cache_row < self.cache_batch_size):
                raise RuntimeError(f"cache_row {cache_row} needs batch size 1 and a cache with more rows")
        pos = torch.arange(first, first + T, device=input_ids.device)
        x = self.token_embed(input_ids) + self.pos_embed(pos)  # (B, T, d_model)
        if retry_step > 0:
            if self.feedback_embed is None:
                raise ValueError("retry_step > 0 needs a model built with retry_conditioning=True")
            step = torch.tensor(min(retry_step, self.config.max_retry_steps - 1), device=x.device)
            x = x + self.feedback_embed(step)  # broadcast over (B, T)
        x = self.drop(x)
        for block in self.layers:
            x = block(x, start_pos, cache_row)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        n_keys: int | None = None,
        retry_steps: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        products: torch.dtype | None = None,
    ) -> torch.Tensor:
        """One new token per cached sequence, each at its own position: (R,) ids at (R,) positions ->
        (R, vocab) next-token logits. Token i belongs to cache row rows[i] (default: row i, all B rows of
        `setup_kv_cache(B)`); its keys/values are written at positions[i] of that row and it attends to the
        row's positions 0 .. positions[i], in one attention call for all rows. Rows not named are neither
        read nor written: attention reads only the named rows' keys and values (a compiled step gathers them
        inside its attention kernel), up to the longest of them. `n_keys` bounds the keys
        attended to, so a step over short contexts does not pay for the whole buffer: at least
        max(positions) + 1 (default max_seq_len); with one row and no `rows` it must be exactly
        positions[0] + 1, so that every key is visible and no mask is needed.

        The same arithmetic as `forward(start_pos=...)` with T == 1, written as plain tensor ops: at
        this model's size a token costs a few microseconds of arithmetic per op and far more in
        per-module Python dispatch, so the step avoids module calls, slicing and per-step allocations
        beyond the op outputs. `retry_steps` (R,) adds each row's retry-step vector (models with retry
        conditioning; 0: none). `products` overrides the linear layers' dtype (default `decode_dtype`): with
        a bf16 cache, torch.float32 suits steps over few rows, where a bf16 product's ~20 us of oneDNN
        set-up outweighs fp32's whole product (`BF16_MIN_ROWS`).
        """
        R, B = tokens.size(0), self.cache_batch_size
        H, D = self.config.n_heads, self.config.head_dim
        if rows is None and B != R:
            raise RuntimeError(f"call setup_kv_cache({R}) before decode_step with {R} sequences")
        n = self.max_seq_len if n_keys is None else n_keys
        mask = None
        if rows is not None:  # row i sees keys 0 .. positions[i] of cache row rows[i]
            mask = (self._key_positions[:n] <= positions[:, None]).view(R, 1, 1, n)  # (R, 1, 1, n)
            write_index = (self._row_offsets[:, rows] + positions[:, None]).view(-1)  # (2 * R * H,)
        else:
            if B > 1 or n_keys is None:  # row b sees keys 0 .. positions[b]; its stale tail is masked out
                mask = (self._key_positions[:n] <= positions[:, None]).view(B, 1, 1, n)  # (B, 1, 1, n)
            write_index = (self._row_offsets + positions[:, None]).view(-1)  # (2 * B * H,) flat positions

        def attend(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # (R, H, 1, D) -> (R, H, 1, D)
            # Each row over its own length, see kernels.py; eagerly also a lone sequence (no mask), where
            # SDPA's set-up costs ~40 us a layer once the weights' stream has evicted it from the caches.
            if self._attention_kernel and (mask is not None or not torch.compiler.is_compiling()):
                named = self._cache_rows if rows is None else rows
                y = kernels.decode_attention(q.view(R, H, D), kv, named, positions + 1, self._attn_scale)
                return y.view(R, H, 1, D)
            kv = kv[:, :, :, :n]  # (2, B, H, n, D)
            if rows is not None:  # only the named rows' keys and values, up to the longest of them
                kv = kv[:, rows]  # (2, R, H, n, D)
            k, v = kv[0], kv[1]  # (R, H, n, D)
            if mask is None or not torch.compiler.is_compiling():
                y = cached_attention(q, k, v, attn_mask=mask)
            else:  # written out, the scale, mask and softmax fuse into one kernel between the two products:
                # compiled, ~1.5-2x faster than the SDPA kernel over 32 rows of 100-300 keys (eagerly, slower);
                # the softmax's division comes after the weighted sum (once per output, not per key): 3-19 %
                # faster over 2-173 rows of 38-150 keys here
                scores = (q * k).sum(-1, keepdim=True) * self._attn_scale  # (R, H, n, 1)
                scores = scores.masked_fill(~mask.transpose(-1, -2), float("-inf"))
                weights = torch.exp(scores - scores.amax(-2, keepdim=True))  # (R, H, n, 1), unnormalised
                y = (weights * v).sum(-2, keepdim=True) / weights.sum(-2, keepdim=True)  # (R, H, 1, D)
            return y

        return self._decode_layers(tokens, positions, write_index, attend, retry_steps, products=products)

    def forward_rows(
        self,
        tokens: torch.Tensor,
        rows: list[int],
        starts: list[int],
        counts: list[int],
        retry_steps: list[int] | None = None,
    ) -> torch.Tensor:
        """New tokens for some rows of the cache, packed into one sequence: row rows[i] gets counts[i]
        tokens at positions starts[i] .. starts[i] + counts[i] - 1, taken in order from the (N,) `tokens`
        (N = sum(counts)). Returns (R, vocab) logits of each row's last new token. Rows not named are
        neither computed nor written.

        A prompt (count > 1, a prefill) and a decode token (count 1) go through the same step: the
        linear layers run once over all N tokens, and each row attends to exactly its own cached
        positions. With the attention kernel (kernels.py) that is one call for all N tokens:
        every token's keys and values are written before attention, so token i, at position pos[i],
        attends to its row's keys 0 .. pos[i], its own prompt's earlier tokens among them. Without it, one
        SDPA call per row: a single masked call over all rows would read every row's keys up to the
        longest context, several times the keys needed when episodes sit at different attempts.
        `retry_steps[i]` is row i's retry step (models with retry conditioning).
        """
        device = tokens.device
        pos_list = [p for s, c in zip(starts, counts, strict=True) for p in range(s, s + c)]
        slot_list = [r for r, c in zip(rows, counts, strict=True) for _ in range(c)]
        pos = torch.tensor(pos_list, device=device)  # (N,)
        steps = None
        if retry_steps is not None:
            steps = torch.tensor([k for k, c in zip(retry_steps, counts, strict=True) for _ in range(c)],
                                 device=device)
        ends = [sum(counts[: i + 1]) for i in range(len(counts))]
        last = torch.tensor([end - 1 for end in ends], device=device)
        slots = torch.tensor(slot_list, device=device)  # (N,) each token's cache row
        if self._attention_kernel:
            return self.packed_step(tokens, pos, slots, last, steps)
        H, D = self.config.n_heads, self.config.head_dim
        write_index = (self._row_offsets[:, slots] + pos[:, None]).view(-1)

        def attend(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # (N, H, 1, D) -> (N, H, 1, D)
            out = []
            for r, s, c, end in zip(rows, starts, counts, ends, strict=True):
                k, v = kv[0, r : r + 1, :, : s + c], kv[1, r : r + 1, :, : s + c]  # (1, H, s + c, D)
                if c == 1:  # one query at the end sees every key
                    out.append(cached_attention(q[end - 1 : end], k, v))
                else:  # query t sits at position s + t and sees keys 0 .. s + t
                    mask = torch.ones(c, s + c, dtype=torch.bool, device=device).tril(s)
                    qr = q[end - c : end].view(c, H, D).transpose(0, 1).unsqueeze(0)  # (1, H, c, D)
                    y = cached_attention(qr, k, v, attn_mask=mask)  # (1, H, c, D)
                    out.append(y[0].transpose(0, 1).unsqueeze(2))  # (c, H, 1, D)
            return torch.cat(out) if len(out) > 1 else out[0]

        return self._decode_layers(tokens, pos, write_index, attend, steps, last)

    def packed_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        last: torch.Tensor,
        retry_steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward_rows` with the attention kernel, as tensors: (N,) tokens at (N,) positions of (N,) cache
        rows -> (R, vocab) logits of the tokens at `last` (R,). Every token's keys and values are written
        first, then one kernel call attends each token to its row's keys 0 .. its position. A fixed
        sequence of tensor ops, so that `compile_decode` compiles it (the batched agents' prompts)."""
        H, D = self.config.n_heads, self.config.head_dim
        write_index = (self._row_offsets[:, slots] + positions[:, None]).view(-1)  # (2 * N * H,)

        def attend(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # (N, H, 1, D) -> (N, H, 1, D)
            y = kernels.decode_attention(q.view(-1, H, D), kv, slots, positions + 1, self._attn_scale)
            return y.unsqueeze(2)

        return self._decode_layers(tokens, positions, write_index, attend, retry_steps, last)

    def prefill_padded(
        self,
        tokens: torch.Tensor,
        rows: torch.Tensor,
        lengths: torch.Tensor,
        retry_steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Whole prompts for some cache rows, from position 0, right-padded to one length: (P, T) ids,
        (P,) cache rows and (P,) true lengths -> (P, vocab) logits of each prompt's last token. Row rows[p]
        gets keys and values at positions 0 .. T - 1; the padding's lie past its prompt, where the position
        masks of later steps leave them unread until they are overwritten. Attention is causal within each
        row, so the padding, which comes last, reaches no real token.

        One dense attention call for all rows and a fixed sequence of tensor ops, so that `compile_decode`
        compiles it whole (the batched agents' first attempts go through it compiled); `forward_rows`
        serves prompts that follow a cached prefix. `retry_steps` (P,) as in `decode_step`."""
        P, T = tokens.shape
        H, D = self.config.n_heads, self.config.head_dim
        key_positions = self._key_positions[:T]  # (T,)
        positions = key_positions.expand(P, T).reshape(-1)  # (P * T,)
        # flat cache offsets in the order write_rows takes them: (k/v, token, head), token = p * T + t
        write_index = (self._row_offsets[:, rows].unsqueeze(2) + key_positions[:, None]).view(-1)  # (2 * P * T * H,)
        steps = None if retry_steps is None else retry_steps[:, None].expand(P, T).reshape(-1)

        def attend(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # (P * T, H, 1, D) -> (P * T, H, 1, D)
            kv = kv[:, rows, :, :T]  # (2, P, H, T, D): what this step just wrote
            q = q.view(P, T, H, D).transpose(1, 2)  # (P, H, T, D)
            y = cached_attention(q, kv[0], kv[1], is_causal=True)  # (P, H, T, D)
            return y.transpose(1, 2).reshape(P * T, H, 1, D)

        last = torch.arange(P, device=tokens.device) * T + lengths - 1  # (P,) each prompt's last token
        return self._decode_layers(tokens.reshape(-1), positions, write_index, attend, steps, last)

    def _decode_layers(self, tokens, positions, write_index, attend, retry_steps, last=None, products=None):
        """The layers of a cached step over (B,) tokens, one position each; `attend(q, kv_buffer)` is the
        attention over the cache. Returns the logits of every token, or of the tokens at `last` (R,).
        `products`: the linear layers' dtype, default `decode_dtype` (see `decode_step`)."""
        cfg = self.config
        B, H, D, C = tokens.size(0), cfg.n_heads, cfg.head_dim, cfg.d_model
        x = F.embedding(tokens, self.token_embed.weight) + F.embedding(positions, self.pos_embed.weight)  # (B, C)
        if retry_steps is not None:  # as forward(): step 0 (a first attempt) adds nothing
            step_vectors = F.embedding(retry_steps.clamp(max=cfg.max_retry_steps - 1), self.feedback_embed.weight)
            x = x + step_vectors * (retry_steps > 0).unsqueeze(1)
        dt = products or self.decode_dtype  # of the products; the residual stream x stays fp32
        layer_weights, head_weight = self._packed[dt], self._packed_head  # (in, out), see _pack_decode_weights
        # A step of one to four tokens streams the weights too big for the caches through
        # kernels.stream_linear (~1.7x MKL's read rate here), compiled (an opaque op in the graph) or not.
        # Asked only where some weight streams, so that a compiled step over many rows of a small model
        # gets no guard on its row count.
        streaming = self._any_streamed and dt == torch.float32 and B <= 4
        layer_streams = self._streamed if streaming else [[None] * 4] * len(self.layers)

        def linear(h: torch.Tensor, weight_bias: tuple[torch.Tensor, torch.Tensor], streamed=None) -> torch.Tensor:
            if streamed is not None:
                return kernels.stream_linear(h, *streamed)
            weight, bias = weight_bias
            return torch.addmm(bias, h.to(dt), weight)

        for block, weights, streams in zip(self.layers, layer_weights, layer_streams, strict=True):
            (qkv_wb, proj_wb, fc_wb, out_wb), (qkv_s, proj_s, fc_s, out_s) = weights, streams
            cache = block.attn.kv_cache
            h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
            qkv = linear(h, qkv_wb, qkv_s).view(B, 3, H, D)
            cache.write_rows(write_index, qkv[:, 1:].transpose(0, 1))  # this token's keys and values
            y = attend(qkv[:, 0].unsqueeze(2).float(), cache.kv)  # (B, H, 1, D)
            x = x + linear(y.reshape(B, C), proj_wb, proj_s).float()
            h = F.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias)
            x = x + linear(F.gelu(linear(h, fc_wb, fc_s)), out_wb, out_s).float()
        if last is not None:
            x = x[last]  # (R, C)
        x = F.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias)
        if streaming and self._streamed_head is not None:
            return kernels.stream_linear(x, self._streamed_head, None)  # (B or R, vocab)
        return x @ head_weight  # (B or R, vocab)

    def forward_with_timing(self, input_ids: torch.Tensor, max_retries: int = 5, new_tokens: int = 16) -> dict:
        """The sketch's timing API, measured for real: each attempt greedily generates `new_tokens`
        tokens from the whole current context (prefill + cached decode), and the next attempt's
        context grows by what was generated. The full loop with verifier feedback is
        `nanocodegen.agent`; this method needs no tokenizer or verifier.

        Returns {"iterations": [{"attempt", "context_length", "latency_ms", "new_tokens"}],
        "total_tokens_generated", "total_ms"}; unlike the sketch, prompt tokens are not counted as
        generated.
        """
        from nanocodegen.generate import generate  # generate imports this module

        was_training = self.training
        self.eval()
        results = {"iterations": [], "total_tokens_generated": 0, "total_ms": 0.0}
        context = input_ids
        for attempt in range(max_retries):
            budget = min(new_tokens, self.max_seq_len - context.size(1))
            if budget <= 0:
                break
            step = attempt if self.feedback_embed is not None else 0
            out = generate(self, context, max_new_tokens=budget, retry_step=step)
            results["iterations"].append(
                {
                    "attempt": attempt,
                    "context_length": context.size(1),
                    "latency_ms": out.prefill_ms + out.decode_ms,
                    "new_tokens": out.tokens.size(1),
                }
            )
            results["total_tokens_generated"] += out.tokens.size(1)
            results["total_ms"] += out.prefill_ms + out.decode_ms
            context = torch.cat([context, out.tokens], dim=1)
        self.train(was_training)
        return results

    def config_dict(self) -> dict:
        return asdict(self.config)
