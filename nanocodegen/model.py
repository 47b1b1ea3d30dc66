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


class KVCache(nn.Module):
    """Preallocated keys and values for one attention layer.

    Buffers are (B, n_heads, max_seq_len, head_dim). `update(start, k, v)` writes positions
    [start, start + T) and returns the keys/values of positions [0, start + T). Positions past the
    write are left as they are; callers roll back simply by writing from an earlier `start`.
    """

    def __init__(self, batch_size: int, max_seq_len: int, n_heads: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch_size, n_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def bytes_used(self, length: int) -> int:
        """Bytes holding the first `length` positions' keys and values."""
        b, h, _, d = self.k.shape
        return 2 * b * h * length * d * self.k.element_size()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # fused q, k, v projections
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        if start_pos is None:  # no cache: plain causal attention over the T positions given
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v = self.kv_cache.update(start_pos, k, v)  # (B, n_heads, start_pos + T, head_dim)
            if T == 1:  # one new token attends to everything cached: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # query i sits at position start_pos + i and may see keys 0 .. start_pos + i
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(start_pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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

    def forward(self, x: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), start_pos)
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
            and first.k.is_inference() == torch.is_inference_mode_enabled()
        ):
            return
        ref = self.token_embed.weight
        for block in self.layers:
            block.attn.kv_cache = KVCache(
                batch_size, self.max_seq_len, self.config.n_heads, self.config.head_dim,
                dtype or ref.dtype, ref.device,
            )
        self.cache_batch_size = batch_size

    def clear_kv_cache(self) -> None:
        for block in self.layers:
            block.attn.kv_cache = None
        self.cache_batch_size = 0

    def kv_cache_bytes(self, length: int) -> int:
        """Bytes of keys and values held for `length` cached positions, over all layers."""
        return sum(b.attn.kv_cache.bytes_used(length) for b in self.layers if b.attn.kv_cache is not None)

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        retry_step: int = 0,
        start_pos: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) token ids -> ((B, T, vocab) logits, loss or None).

        `targets` (B, T) uses -100 for positions that carry no loss (prompt and feedback tokens).
        `start_pos`: None runs without a cache; an int writes the T positions into the installed KV
        cache starting there and attends to everything cached before them.
        """
        B, T = input_ids.shape
        first = 0 if start_pos is None else start_pos
        if first + T > self.max_seq_len:
            raise ValueError(
                f"sequence of {first + T} tokens exceeds the model's max_seq_len ({self.max_seq_len}); "
                "shorten the prompt or use a model with a longer context"
            )
        if start_pos is not None and self.cache_batch_size != B:
            raise RuntimeError(f"call setup_kv_cache({B}) before a cached forward with batch size {B}")
        pos = torch.arange(first, first + T, device=input_ids.device)
        x = self.token_embed(input_ids) + self.pos_embed(pos)  # (B, T, d_model)
        if retry_step > 0:
            if self.feedback_embed is None:
                raise ValueError("retry_step > 0 needs a model built with retry_conditioning=True")
            step = torch.tensor(min(retry_step, self.config.max_retry_steps - 1), device=x.device)
            x = x + self.feedback_embed(step)  # broadcast over (B, T)
        x = self.drop(x)
        for block in self.layers:
            x = block(x, start_pos)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

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
