"""Batched agents produce the sequential agent's episodes (real model, real verifier)."""

import functools
import json
from dataclasses import replace

import pytest
import torch

from nanocodegen.agent import Agent
from nanocodegen.batch import BatchedAgents
from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
from nanocodegen.cli import main
from nanocodegen.config import AgentConfig
from nanocodegen.generate import CompiledDecode, decode_greedy, uncompile_decode
from nanocodegen.model import NanoCodeGenAgent
from nanocodegen.tasks import load_suite
from nanocodegen.verifier import CodeVerifier


@pytest.fixture(scope="module")
def shipped():
    model, tok, config = load_checkpoint(default_checkpoint())
    return model, tok, config["prompt"]["feedback_budget"]


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(workers=2) as v:
        yield v


def comparable(episodes):
    """Everything but times."""
    return [(e.id, e.solved, e.attempts_to_correct, e.total_prompt_tokens, e.total_new_tokens,
             [(a.code, a.outcome, a.output, a.feedback, a.context_tokens, a.new_tokens, a.prefill_tokens,
               a.cached_tokens, a.kv_cache_bytes) for a in e.attempts]) for e in episodes]


def run_both(model, tok, verifier, tasks, budget, batch_size, **cfg):
    config = AgentConfig(**cfg)
    agent = Agent(model, tok, verifier, config, budget)
    sequential = [agent.run(t) for t in tasks]
    seen = []
    batched = BatchedAgents(model, tok, verifier, config, batch_size, budget).run(
        tasks, lambda i, e: seen.append(i))
    assert sorted(seen) == list(range(len(tasks)))
    return sequential, batched


def with_retries(tasks):
    """Every other task gets an expected value no program prints, so it retries until it gives up, with the
    verifier's real feedback; the others are solved (or not) as the model manages."""
    return [replace(t, expected="unreachable") if i % 2 else t for i, t in enumerate(tasks)]


@pytest.mark.parametrize("mode, n_tasks", [("prefix", 16), ("attempt", 6), ("none", 2)])
def test_greedy_batched_equals_sequential(shipped, verifier, mode, n_tasks):
    model, tok, budget = shipped
    tasks = with_retries(load_suite("synthetic")[:n_tasks])
    sequential, batched = run_both(model, tok, verifier, tasks, budget, 5, kv_cache=mode, max_attempts=3,
                                   max_new_tokens=48)
    assert any(len(e.attempts) > 1 for e in sequential)  # retries (and prefix reuse) are exercised
    assert comparable(batched) == comparable(sequential)
    if mode == "prefix":
        assert any(a.cached_tokens > 0 for e in batched for a in e.attempts)


def test_a_batched_run_has_a_child_preforked_for_each_slot(shipped, verifier, monkeypatch):
    model, tok, budget = shipped
    asked, prefork = [], verifier.prefork
    monkeypatch.setattr(verifier, "prefork", lambda n: asked.append(n) or prefork(n))
    episodes = BatchedAgents(model, tok, verifier, AgentConfig(max_new_tokens=48), 4, budget).run(
        load_suite("synthetic")[:6])
    assert asked == [4] and len(episodes) == 6


@pytest.mark.parametrize("mode", ["prefix", "attempt"])
def test_greedy_chunks_batched_equal_sequential(shipped, verifier, mode):
    # compile_decode's greedy chunks, run eagerly (the same function, without the compiler): attempts end
    # inside chunks, rows near their budget fall back to single steps, a lone row is padded with the
    # scratch row; the records must still be the sequential single-step agent's
    model, tok, budget = shipped
    tasks = with_retries(load_suite("synthetic")[24:36])
    config = AgentConfig(kv_cache=mode, max_attempts=3, max_new_tokens=40)
    sequential = [Agent(model, tok, verifier, config, budget).run(t) for t in tasks]
    model.compiled_decode = CompiledDecode(3, functools.partial(decode_greedy, model, steps=3))
    try:
        runner = BatchedAgents(model, tok, verifier, config, 4, budget)
        batched = runner.run(tasks)
    finally:
        uncompile_decode(model)
    assert comparable(batched) == comparable(sequential)
    stats = runner.stats
    assert stats.decoded_tokens > stats.decoding_rows and stats.discarded_tokens > 0  # chunks ran, and overran


def test_sampled_batched_equals_sequential(shipped, verifier):
    # each episode draws from its own generator, seeded from the run's seed and the task id
    model, tok, budget = shipped
    tasks = with_retries(load_suite("synthetic")[16:24])
    sequential, batched = run_both(model, tok, verifier, tasks, budget, 3, temperature=1.0, top_k=20,
                                   max_attempts=2, max_new_tokens=48, seed=7)
    assert comparable(batched) == comparable(sequential)


@pytest.mark.parametrize("mode", ["attempt", "none"])
def test_retry_conditioned_model_batches_with_per_row_retry_steps(shipped, verifier, mode):
    _, tok, budget = shipped
    torch.manual_seed(0)  # an untrained model: its programs fail, so every episode retries
    model = NanoCodeGenAgent(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_layers=2, max_seq_len=160).eval()
    tasks = load_suite("seed")[:3]
    sequential, batched = run_both(model, tok, verifier, tasks, 8, 2, kv_cache=mode, max_attempts=3,
                                   max_new_tokens=12)
    assert all(len(e.attempts) == 3 for e in sequential)
    assert comparable(batched) == comparable(sequential)
    if mode == "attempt":  # greedy chunks carry each row's retry step too
        model.compiled_decode = CompiledDecode(4, functools.partial(decode_greedy, model, steps=4))
        chunked = BatchedAgents(model, tok, verifier, AgentConfig(kv_cache=mode, max_attempts=3, max_new_tokens=12),
                                2, 8).run(tasks)
        assert comparable(chunked) == comparable(sequential)
    with pytest.raises(ValueError, match="retry-step conditioning"):
        BatchedAgents(model, tok, verifier, AgentConfig(kv_cache="prefix"))


def test_bench_batch_flag_writes_results_in_task_order_and_a_plot(tmp_path):
    tasks = tmp_path / "mine.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Return {i} + {i}", "expected": str(2 * i)})
                             + "\n" for i in range(6)))
    assert main(["bench", "--tasks", str(tasks), "--batch", "4", "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [e["id"] for e in results["episodes"]] == [f"t{i}" for i in range(6)]
    assert results["config"]["batch"] == 4 and results["summary"]["tasks"] == 6
    assert (tmp_path / "run" / "attempts.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["bench", "--tasks", str(tasks), "--batch", "0"]) == 2


def test_bench_compile_batched_equals_eager(tmp_path):
    # the compiled path end to end: warm-up before the timed run, greedy chunks over named rows, the
    # scratch row; same episodes as the eager batched run
    tasks = tmp_path / "mine.jsonl"
    rows = with_retries(load_suite("synthetic")[40:46])
    tasks.write_text("".join(json.dumps({"id": t.id, "prompt": t.prompt, "expected": t.expected}) + "\n" for t in rows))
    runs = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        assert main(["bench", "--tasks", str(tasks), "--batch", "3", "--max-attempts", "2", "--out", str(out),
                     *flags]) == 0
        runs[name] = json.loads((out / "results.json").read_text())
    codes = {name: [[a["code"] for a in e["attempts"]] for e in r["episodes"]] for name, r in runs.items()}
    assert codes["compiled"] == codes["eager"]
    assert runs["compiled"]["compile"]["chunk"] == 4 and runs["compiled"]["compile"]["warm_up_s"] > 0
    assert runs["compiled"]["batch_stats"]["decoded_tokens"] > runs["compiled"]["batch_stats"]["decoding_rows"]


def test_bench_precision_bf16_runs_batched_and_records_it(tmp_path):
    # bf16 products and KV cache (NanoCodeGenAgent.set_decode_dtype): codes may differ from fp32's where
    # logits nearly tie, so this asserts the run and its record, not equality
    tasks = tmp_path / "mine.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Return {i} + {i}", "expected": str(2 * i)})
                             + "\n" for i in range(4)))
    out = tmp_path / "bf16"
    assert main(["bench", "--tasks", str(tasks), "--batch", "2", "--precision", "bf16", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["precision"] == "bf16" and results["summary"]["tasks"] == 4
    assert all(e["attempts"] for e in results["episodes"])
    with pytest.raises(SystemExit):
        main(["bench", "--tasks", str(tasks), "--precision", "fp16"])


def test_padding_groups_keep_long_prompts_apart():
    from nanocodegen.batch import padding_groups

    assert padding_groups([]) == []
    assert padding_groups([30, 20, 25]) == [[1, 2, 0]]  # shortest first, one group
    assert padding_groups([20, 250, 30, 45]) == [[0, 2], [3], [1]]  # 45 > 2 x 20 opens a group; 250 its own
    assert sorted(i for g in padding_groups([5, 9, 11, 40, 3]) for i in g) == [0, 1, 2, 3, 4]
