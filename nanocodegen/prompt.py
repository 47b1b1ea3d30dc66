"""The prompt format, shared by the agent (inference) and the training data, so the two never drift.

    <|task|> task text <|code|> attempt 1 <|end|> <|feedback|> outcome: error <|code|> attempt 2 ...

Previous attempts enter the context as the token ids the model produced; feedback is the verifier's
real message, truncated to a token budget.
"""

from __future__ import annotations

from nanocodegen.records import Verdict
from nanocodegen.tokenizer import CodeTokenizer

IGNORE = -100  # target value that carries no loss


def format_feedback(verdict: Verdict) -> str:
    """The text appended to the prompt after a failed attempt, e.g. "runtime_error: NameError: ..."."""
    return f"{verdict.outcome.value}: {verdict.error}" if verdict.error else verdict.outcome.value


def feedback_ids(tok: CodeTokenizer, feedback: str, budget: int) -> list[int]:
    return tok.encode(feedback)[:budget]


def task_ids(tok: CodeTokenizer, task_prompt: str) -> list[int]:
    """Ids of the first prompt: <|task|> text <|code|>."""
    return [tok.task_id, *tok.encode(task_prompt), tok.code_id]


def retry_ids(tok: CodeTokenizer, attempt_ids: list[int], feedback: str, budget: int) -> list[int]:
    """Ids appended after a failed attempt: the attempt (closed with <|end|>), its feedback and the
    opening of the next attempt."""
    closed = attempt_ids if attempt_ids[-1:] == [tok.end_id] else [*attempt_ids, tok.end_id]
    return [*closed, tok.feedback_id, *feedback_ids(tok, feedback, budget), tok.code_id]


def training_example(
    tok: CodeTokenizer, task_prompt: str, failures: list[tuple[str, str]], solution: str, budget: int
) -> tuple[list[int], list[int]]:
    """One episode as (input ids, target ids) of equal length.

    `failures` are (wrong code, feedback text) pairs shown before the solution. Only the solution's
    tokens and its closing <|end|> carry loss: the model learns to write code, not to predict tasks,
    feedback or wrong attempts.
    """
    ids = task_ids(tok, task_prompt)
    for code, feedback in failures:
        ids += retry_ids(tok, tok.encode(code), feedback, budget)
    start = len(ids)
    ids += [*tok.encode(solution), tok.end_id]
    inputs = ids[:-1]
    targets = [IGNORE] * (start - 1) + ids[start:]
    return inputs, targets
