"""Export a checkpoint as a Hugging Face GPT-2 model folder, with its tokenizer.

    nanocodegen export-hf runs/hf                        # the shipped model
    nanocodegen export-hf runs/hf --checkpoint runs/train

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("runs/hf")   # greedy tokens equal ours
    tok = AutoTokenizer.from_pretrained("runs/hf")

Our model is GPT-2 in all but two details, both handled here: the MLP uses exact GELU (GPT-2's default
is the tanh approximation, "gelu_new"), so the config says `activation_function="gelu"`; and HF's GPT-2
keeps its projections in `Conv1D` layers, whose weights are stored (in, out), the transpose of
`nn.Linear`'s. Retry-step conditioning has no GPT-2 counterpart: a model trained with it is exported
without it, and the export then equals our model at retry step 0 (`ExportResult.dropped` says so).

The folder is written with safetensors and JSON alone (transformers is not needed to export, only to
load): config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
special_tokens_map.json. Any GPT-2-capable engine (vLLM, TGI, llama.cpp's converter) can serve it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.tokenizer import END, PAD, TOKENIZER_FILE, CodeTokenizer

HF_WEIGHTS_FILE = "model.safetensors"


@dataclass
class ExportResult:
    path: Path
    params: int
    dropped: list[str]  # parameters with no GPT-2 counterpart, left out of the export


def gpt2_config(model: NanoCodeGenAgent, tok: CodeTokenizer) -> dict:
    cfg = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": 4 * cfg.d_model,
        "activation_function": "gelu",  # exact GELU, as nn.GELU(); GPT-2's own default is "gelu_new"
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": tok.task_id,
        "eos_token_id": tok.end_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": str(model.token_embed.weight.dtype).removeprefix("torch."),
    }


def gpt2_state_dict(model: NanoCodeGenAgent) -> dict[str, torch.Tensor]:
    """Our weights under GPT2LMHeadModel's names. Conv1D stores (in, out): linear weights are transposed.
    The LM head is tied to the token embedding and stored once, as HF's own GPT-2 checkpoints do."""
    t = lambda w: w.detach().t().contiguous()
    c = lambda w: w.detach().contiguous()
    sd = {
        "transformer.wte.weight": c(model.token_embed.weight),
        "transformer.wpe.weight": c(model.pos_embed.weight),
        "transformer.ln_f.weight": c(model.ln_f.weight),
        "transformer.ln_f.bias": c(model.ln_f.bias),
    }
    for i, block in enumerate(model.layers):
        p = f"transformer.h.{i}."
        sd.update({
            p + "ln_1.weight": c(block.ln_1.weight), p + "ln_1.bias": c(block.ln_1.bias),
            p + "attn.c_attn.weight": t(block.attn.qkv.weight), p + "attn.c_attn.bias": c(block.attn.qkv.bias),
            p + "attn.c_proj.weight": t(block.attn.proj.weight), p + "attn.c_proj.bias": c(block.attn.proj.bias),
            p + "ln_2.weight": c(block.ln_2.weight), p + "ln_2.bias": c(block.ln_2.bias),
            p + "mlp.c_fc.weight": t(block.mlp[0].weight), p + "mlp.c_fc.bias": c(block.mlp[0].bias),
            p + "mlp.c_proj.weight": t(block.mlp[2].weight), p + "mlp.c_proj.bias": c(block.mlp[2].bias),
        })
    return {k: v.cpu() for k, v in sd.items()}


def export_model(model: NanoCodeGenAgent, tok: CodeTokenizer, out_dir: str | Path) -> ExportResult:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; pass a new or empty folder to export into")
    out.mkdir(parents=True, exist_ok=True)
    sd = gpt2_state_dict(model)
    save_file(sd, str(out / HF_WEIGHTS_FILE), metadata={"format": "pt"})
    config = gpt2_config(model, tok)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": tok.task_id, "eos_token_id": tok.end_id, "pad_token_id": tok.pad_id,
                  "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tok.save(out / TOKENIZER_FILE)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": END,
        "pad_token": PAD,
        "model_max_length": model.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": END, "pad_token": PAD}, indent=2) + "\n")
    dropped = ["feedback_embed.weight"] if model.feedback_embed is not None else []
    return ExportResult(out, sum(v.numel() for v in sd.values()), dropped)


def export_checkpoint(out_dir: str | Path, checkpoint: str | Path | None = None) -> ExportResult:
    """Load a nanocodegen checkpoint folder (default: the shipped model) and export it to `out_dir`."""
    model, tok, _ = load_checkpoint(checkpoint or default_checkpoint(), "cpu")
    return export_model(model, tok, out_dir)
