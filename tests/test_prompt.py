import pytest

from nanocodegen.prompt import IGNORE, format_feedback, retry_ids, task_ids, training_example
from nanocodegen.records import Outcome, Verdict
from nanocodegen.tasks import SEED_SOLUTIONS, TASK_BANK
from nanocodegen.tokenizer import CodeTokenizer


@pytest.fixture(scope="module")
def tok() -> CodeTokenizer:
    return CodeTokenizer.train([p for p, _ in TASK_BANK] * 10 + SEED_SOLUTIONS * 10, vocab_size=300)


def test_feedback_text_names_outcome_and_error():
    v = Verdict(Outcome.RUNTIME_ERROR, error="ZeroDivisionError: division by zero (line 1)")
    assert format_feedback(v) == "runtime_error: ZeroDivisionError: division by zero (line 1)"
    assert format_feedback(Verdict(Outcome.TIMEOUT)) == "timeout"


def test_training_example_matches_the_agent_prompt(tok):
    """The agent's context before attempt 2 is exactly the training input before the solution."""
    wrong, feedback = "result = max([1, 2])", "wrong_output: result = 2"
    inputs, targets = training_example(tok, "Return 2 ** 10", [(wrong, feedback)], "result = 2 ** 10", 32)
    context = task_ids(tok, "Return 2 ** 10") + retry_ids(tok, tok.encode(wrong), feedback, 32)
    assert inputs[: len(context)] == context
    solution = tok.encode("result = 2 ** 10") + [tok.end_id]
    assert len(inputs) == len(targets) == len(context) + len(solution) - 1
    # loss only on the solution and its end token
    assert targets[: len(context) - 1] == [IGNORE] * (len(context) - 1)
    assert targets[len(context) - 1 :] == solution


def test_feedback_is_truncated_to_budget(tok):
    long = "runtime_error: " + "x" * 500
    ids = retry_ids(tok, [5], long, budget=8)
    assert ids[0] == 5 and ids[1] == tok.end_id and ids[2] == tok.feedback_id
    assert len(ids) == 2 + 1 + 8 + 1 and ids[-1] == tok.code_id
