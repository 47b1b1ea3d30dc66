"""The original sketch's demo, replayed with the real pieces.

    nanocodegen demo
    python -m nanocodegen.demo

The sketch ran an untrained model on random tokens and an in-process verifier. Here: the shipped,
trained model; a training forward pass on real episodes (loss on code tokens only); the timing API
on a real prompt; one real agent episode with verifier feedback; the verifier's demo calls, run in
the sandbox.
"""

from __future__ import annotations

import torch

from nanocodegen.agent import Agent
from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
from nanocodegen.config import AgentConfig
from nanocodegen.prompt import task_ids, training_example
from nanocodegen.tasks import seed_tasks
from nanocodegen.train import pad_batch


def main(checkpoint: str | None = None) -> None:
    from nanocodegen.verifier import CodeVerifier

    print("🚀 Nano-CodeGen Agent Benchmark — Architecture Demo")
    model, tok, config = load_checkpoint(checkpoint or default_checkpoint())
    print(f"📊 Parameters: ~{model.num_params() / 1e6:.1f}M (trained; vocab {tok.vocab_size}, "
          f"context {model.max_seq_len})")

    tasks = seed_tasks()
    budget = config.get("prompt", {}).get("feedback_budget", 32)
    batch = [training_example(tok, t.prompt, [], t.solution, budget) for t in tasks[:4]]
    x, y = pad_batch(batch, tok.pad_id)
    with torch.no_grad():
        logits, loss = model(x, targets=y)
    print(f"✅ Training forward pass: logits={logits.shape}, loss={loss.item():.4f} (code tokens of 4 seed tasks)")

    prompt = torch.tensor([task_ids(tok, tasks[0].prompt)])
    results = model.forward_with_timing(prompt, max_retries=5)
    print(f"✅ Timing API ({len(results['iterations'])} iterations, each generating from a growing context):")
    for it in results["iterations"]:
        print(f"   Attempt {it['attempt']}: ctx_len={it['context_length']}, latency={it['latency_ms']:.2f} ms")
    print(f"   Total: {results['total_tokens_generated']} tokens generated, {results['total_ms']:.2f} ms")

    with CodeVerifier() as verifier:
        agent = Agent(model, tok, verifier, AgentConfig(), budget)
        print("\n🔁 Agent loop on the seed suite (generate → verify → feedback → retry):")
        for task in tasks:
            ep = agent.run(task)
            last = ep.attempts[-1]
            print(f"   {task.prompt!r}: {'solved' if ep.solved else 'unsolved'} in {len(ep.attempts)} attempt(s), "
                  f"code {last.code!r} → {last.output!r}, {ep.wall_ms:.1f} ms")

        print("\n🔍 CodeVerifier Demo:")
        test_code = "result = sum([1, 2, 3, 4, 5])"
        ok, output = verifier.execute(test_code)
        print(f"   Code: '{test_code}' → OK={ok}, output='{output}'")
        bad_code = "import os; result = os.getcwd()"
        ok, output = verifier.execute(bad_code)
        print(f"   Code: '{bad_code}' → OK={ok}, output='{output}'")


if __name__ == "__main__":
    main()
