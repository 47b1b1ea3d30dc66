"""Training data: (task -> code) episodes and repair episodes with real verifier feedback.

A repair episode shows the task, one or more wrong attempts each followed by the verifier's real
message for it, then the right code. Wrong attempts are realistic corruptions of the reference
solution (and, for underspecified tasks, the other readings); every one is run through the sandboxed
verifier, its message is what the agent would see, and any that turns out correct is dropped.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from nanocodegen.corruptions import corrupt
from nanocodegen.prompt import IGNORE, feedback_ids, format_feedback
from nanocodegen.records import Outcome
from nanocodegen.tasks import Task
from nanocodegen.tokenizer import CodeTokenizer

# How many failed attempts a repair episode shows: mostly one, sometimes up to four, so that the
# positions late attempts reach are trained too.
FAILURE_COUNTS, FAILURE_WEIGHTS = (1, 2, 3, 4), (0.55, 0.25, 0.12, 0.08)
CANDIDATES_PER_TASK = 4
# Underspecified tasks are drawn this many times as often, and shown with failures this often: their
# repair episodes are the ones that can only be solved by reading the failed attempt.
CONVENTION_WEIGHT, CONVENTION_REPAIR_FRACTION = 3, 0.85


@dataclass
class TaskData:
    """A training task with its verified wrong attempts: (code, feedback) pairs."""

    task: Task
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class TokenizedTask:
    prompt: list[int]  # <|task|> text <|code|>
    solution: list[int]  # code <|end|>
    failures: list[tuple[list[int], list[int]]]  # (code <|end|>, <|feedback|> text <|code|>)
    distractor_count: int = 0  # the first failures that are other readings of the task


def verify_candidates(tasks: list[Task], verifier, seed: int, workers: int = 2, progress=None) -> list[TaskData]:
    """Corrupt each task's solution, run every candidate through the verifier, keep the failures.

    Distractors (other readings of an underspecified task) come first in each task's list.
    """
    rng = random.Random(seed)
    jobs: list[tuple[int, str]] = []
    for i, task in enumerate(tasks):
        candidates = list(dict.fromkeys(task.distractors))
        for c in corrupt(task, rng, CANDIDATES_PER_TASK):
            if c.code not in candidates:
                candidates.append(c.code)
        jobs.extend((i, code) for code in candidates)

    def check(job: tuple[int, str]):
        i, code = job
        return i, code, verifier.verify(code, tasks[i].expected)

    out = [TaskData(task) for task in tasks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, code, verdict in pool.map(check, jobs, chunksize=16):
            if verdict.outcome is not Outcome.CORRECT:
                out[i].failures.append((code, format_feedback(verdict)))
            if progress is not None:
                progress(1)
    return out


def episode_text(task: Task, failures: list[tuple[str, str]]) -> str:
    """Plain text of an episode, for training the tokenizer."""
    parts = [task.prompt]
    for code, feedback in failures:
        parts += [code, feedback]
    parts.append(task.solution)
    return "\n".join(parts)


def tokenize_tasks(data: list[TaskData], tok: CodeTokenizer, feedback_budget: int) -> list[TokenizedTask]:
    out = []
    for d in data:
        failures = [
            (
                [*tok.encode(code), tok.end_id],
                [tok.feedback_id, *feedback_ids(tok, feedback, feedback_budget), tok.code_id],
            )
            for code, feedback in d.failures
        ]
        distractors = sum(1 for code, _ in d.failures if code in d.task.distractors)
        out.append(
            TokenizedTask(
                prompt=[tok.task_id, *tok.encode(d.task.prompt), tok.code_id],
                solution=[*tok.encode(d.task.solution), tok.end_id],
                failures=failures,
                distractor_count=distractors,
            )
        )
    return out


def assemble(t: TokenizedTask, failures: list[int]) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one episode showing the given failures (indices into t.failures).

    Only the solution's tokens (and its <|end|>) carry loss. Must equal `prompt.training_example`
    for the same content (tested).
    """
    ids = list(t.prompt)
    for j in failures:
        code, fb = t.failures[j]
        ids += code + fb
    start = len(ids)
    ids += t.solution
    return ids[:-1], [IGNORE] * (start - 1) + ids[start:]


def sample_failures(t: TokenizedTask, rng: random.Random, repair_fraction: float) -> list[int]:
    """Which failures an episode shows: none (a direct example) or a few.

    For an underspecified task the failures shown are other readings (in random order, sometimes
    followed by a corruption): the one mistake whose fix depends on the failed attempt, so these
    episodes are what teaches the model to read its failure rather than ignore it. Other tasks show
    corruptions of their solution.
    """
    if not t.failures:
        return []
    distractors = list(range(t.distractor_count))
    others = list(range(t.distractor_count, len(t.failures)))
    rng.shuffle(others)
    if distractors:
        if rng.random() >= CONVENTION_REPAIR_FRACTION:
            return []
        rng.shuffle(distractors)
        shown = distractors[: rng.randint(1, len(distractors))]
        if others and rng.random() < 0.2:
            shown.append(others[0])
        return shown
    if rng.random() >= repair_fraction:
        return []
    return others[: rng.choices(FAILURE_COUNTS, FAILURE_WEIGHTS)[0]]


def fitted(t: TokenizedTask, failures: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """The episode with as many of the chosen failures as fit in `max_len` positions."""
    while True:
        inputs, targets = assemble(t, failures)
        if len(inputs) <= max_len or not failures:
            return inputs, targets
        failures = failures[:-1]


def episode_stream(
    tasks: list[TokenizedTask], seed: int, repair_fraction: float, max_len: int
) -> Iterator[tuple[list[int], list[int]]]:
    """Endless shuffled episodes: each pass over the tasks draws fresh failure combinations."""
    rng = random.Random(seed)
    weighted = [i for i, t in enumerate(tasks) for _ in range(CONVENTION_WEIGHT if t.distractor_count else 1)]
    for _epoch in itertools.count():
        order = list(weighted)
        rng.shuffle(order)
        for i in order:
            yield fitted(tasks[i], sample_failures(tasks[i], rng, repair_fraction), max_len)


def fixed_episodes(tasks: Iterable[TokenizedTask], seed: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Validation episodes: every task once directly and once with one failure (if it has one)."""
    rng = random.Random(seed)
    out = []
    for t in tasks:
        out.append(assemble(t, []))
        if t.failures:
            out.append(fitted(t, [rng.randrange(len(t.failures))], max_len))
    return out
