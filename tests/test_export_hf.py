"""The Hugging Face export: transformers loads it and its greedy tokens equal ours."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
from nanocodegen.cli import main
from nanocodegen.export_hf import export_checkpoint, export_model
from nanocodegen.generate import generate
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.prompt import task_ids

PROMPTS = ["Return the sum of [3, 20, 2, 29, 14]", "Return 2 ** 10", "Return the string 'abc' reversed",
           "Return the largest of [4, 9, 2]"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    result = export_checkpoint(out)
    model, tok, _ = load_checkpoint(default_checkpoint())
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    return result, model, tok, hf


def test_shipped_model_exports_with_equal_logits_and_greedy_tokens(exported):
    result, model, tok, hf = exported
    assert result.dropped == [] and result.params == model.num_params()
    assert hf.config.activation_function == "gelu" and hf.config.eos_token_id == tok.end_id
    for text in PROMPTS:
        ids = torch.tensor([task_ids(tok, text)])
        with torch.inference_mode():
            assert torch.allclose(model(ids)[0], hf(ids).logits, atol=1e-5)
            ours = generate(model, ids, 48, stop_token=tok.end_id).tokens[0].tolist()
            theirs = hf.generate(ids, max_new_tokens=48, do_sample=False)[0, ids.size(1):].tolist()
        assert ours == theirs and ours[-1] == tok.end_id


def test_exported_tokenizer_matches_ours(exported):
    result, _, tok, _ = exported
    hf_tok = AutoTokenizer.from_pretrained(result.path)
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.end_id, tok.pad_id)
    text = "result = sorted([3, 1, 2])[::-1]  # ünïcode"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text


def test_retry_conditioning_is_dropped_and_said(tmp_path, exported):
    _, _, tok, _ = exported
    torch.manual_seed(0)
    model = NanoCodeGenAgent(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_layers=1, max_seq_len=64).eval()
    result = export_model(model, tok, tmp_path)
    assert result.dropped == ["feedback_embed.weight"]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.inference_mode():  # equal to our model at retry step 0
        assert torch.allclose(model(ids)[0], hf(ids).logits, atol=1e-5)


def test_cli_export_hf(tmp_path, capsys):
    assert main(["export-hf", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 384
    assert main(["export-hf", str(tmp_path / "x"), "--checkpoint", str(tmp_path / "missing")]) == 2
