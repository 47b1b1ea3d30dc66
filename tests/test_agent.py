"""The agent loop with a scripted stand-in for the model (it returns canned attempts), so the loop's
bookkeeping is tested exactly; the real verifier judges every attempt."""

import pytest
import torch

from nanocodegen.agent import Agent
from nanocodegen.config import AgentConfig
from nanocodegen.generate import Generation
from nanocodegen.model import ModelConfig, NanoCodeGenAgent
from nanocodegen.prompt import retry_ids, task_ids
from nanocodegen.tasks import Task
from nanocodegen.tokenizer import CodeTokenizer
from nanocodegen.verifier import CodeVerifier

TASK = Task(id="t/1", prompt="Return the sum of [1, 2, 3]", expected="6", tier=1)


@pytest.fixture(scope="module")
def tok() -> CodeTokenizer:
    corpus = ["result = sum([1, 2, 3])", "Return the sum of [1, 2, 3]", "wrong_output: result = 3"] * 20
    return CodeTokenizer.train(corpus, vocab_size=300)


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier() as v:
        yield v


class ScriptedAgent(Agent):
    """Answers attempt k with the k-th scripted program and records every context it was shown."""

    def __init__(self, programs, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.programs, self.contexts = programs, []

    def generate_attempt(self, context, attempt, prefix_cache):
        self.contexts.append(list(context))
        ids = self.tok.encode(self.programs[attempt - 1]) + [self.tok.end_id]
        return Generation(torch.tensor([ids]), 1.0, 2.0, 1.0, len(context), 0)


def make_agent(tok, verifier, programs, max_seq_len=256, **cfg):
    model = NanoCodeGenAgent.from_config(
        ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, max_seq_len=max_seq_len,
                    retry_conditioning=False)
    )
    return ScriptedAgent(programs, model, tok, verifier, AgentConfig(**cfg), feedback_budget=16)


def test_retries_until_correct_with_feedback_appended(tok, verifier):
    programs = ["result = len([1, 2, 3])", "result = sum([1, 2, 3]", "result = sum([1, 2, 3])"]
    agent = make_agent(tok, verifier, programs, max_new_tokens=16)
    ep = agent.run(TASK)
    assert ep.solved and ep.attempts_to_correct == 3
    assert [a.outcome for a in ep.attempts] == ["wrong_output", "syntax_error", "correct"]
    assert ep.attempts[0].feedback == "wrong_output: result = 3"
    assert ep.attempts[1].feedback.startswith("syntax_error: ")
    assert ep.attempts[2].feedback == ""
    # each retry's context is the previous one plus the failed attempt and its feedback
    first = task_ids(tok, TASK.prompt)
    assert agent.contexts[0] == first
    attempt1 = tok.encode(programs[0]) + [tok.end_id]
    assert agent.contexts[1] == first + retry_ids(tok, attempt1, ep.attempts[0].feedback, 16)
    assert [a.context_tokens for a in ep.attempts] == [len(c) for c in agent.contexts]
    assert ep.total_prompt_tokens == sum(len(c) for c in agent.contexts)
    assert ep.total_new_tokens == sum(a.new_tokens for a in ep.attempts)


def test_gives_up_after_max_attempts(tok, verifier):
    agent = make_agent(tok, verifier, ["result = 5"] * 3, max_attempts=3, max_new_tokens=16)
    ep = agent.run(TASK)
    assert not ep.solved and ep.attempts_to_correct is None and len(ep.attempts) == 3


def test_context_overflow_stops_the_episode(tok, verifier):
    # room for the first attempt, not for a second one after the feedback
    first = len(task_ids(tok, TASK.prompt))
    agent = make_agent(tok, verifier, ["result = 5"] * 5, max_seq_len=first + 24, max_new_tokens=20)
    ep = agent.run(TASK)
    assert [a.outcome for a in ep.attempts] == ["wrong_output", "context_overflow"]
    assert ep.attempts[-1].new_tokens == 0 and not ep.solved


def test_withheld_feedback_resamples_from_the_bare_task(tok, verifier):
    agent = make_agent(tok, verifier, ["result = 5", "result = 6"], max_new_tokens=16, withhold_feedback=True)
    ep = agent.run(TASK)
    assert ep.solved and agent.contexts[0] == agent.contexts[1]


def test_prefix_mode_refuses_a_retry_conditioned_model(tok, verifier):
    model = NanoCodeGenAgent(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match="retry-step conditioning"):
        Agent(model, tok, verifier, AgentConfig(kv_cache="prefix"))
    Agent(model, tok, verifier, AgentConfig(kv_cache="attempt"))  # fine without a shared cache
