"""Training data: (task -> code) episodes and repair episodes with real verifier feedback.

A repair episode shows the task, one or more wrong attempts each followed by the verifier's real
message for it, then the right code. Wrong attempts are realistic corruptions of the reference
solution (and, for underspecified tasks, the other readings); every one is run through the sandboxed
verifier, its message is what the agent would see, and any that turns out correct is dropped.

Episodes reach training as an endless `EpisodeStream`, grouped into length-sorted global batches by
`BatchStream` and split over processes and micro-batches by `shard`; both streams' positions are plain
data, so a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import random
import re
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
ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


Episode = tuple[list[int], list[int]]  # (input ids, target ids), of equal length


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


def without_addresses(text: str) -> str:
    """`text` with object addresses ("<list_reverseiterator object at 0x7f3a...>") as "0x...".

    Feedback is training data, and training data must follow from the seed alone: a resumed run or
    a run on several processes reproduces the uninterrupted one only if every verification reads
    the same. Addresses are the one part of the verifier's messages that changes from run to run."""
    return ADDRESS.sub("0x...", text)


def candidate_jobs(tasks: list[Task], seed: int) -> list[tuple[int, str]]:
    """(task index, code) for every wrong-attempt candidate: each task's other readings (distractors)
    first, then corruptions of its solution. Deterministic in `seed`, so every rank of a
    multi-process run draws the same list and can verify its own share of it."""
    rng = random.Random(seed)
    jobs: list[tuple[int, str]] = []
    for i, task in enumerate(tasks):
        candidates = list(dict.fromkeys(task.distractors))
        for c in corrupt(task, rng, CANDIDATES_PER_TASK):
            if c.code not in candidates:
                candidates.append(c.code)
        jobs.extend((i, code) for code in candidates)
    return jobs


def check_jobs(
    jobs: list[tuple[int, str]], tasks: list[Task], verifier, workers: int = 2, progress=None
) -> list[str | None]:
    """Run each candidate through the verifier: its feedback text, or None where it is correct after all."""

    def check(job: tuple[int, str]) -> str | None:
        i, code = job
        verdict = verifier.verify(code, tasks[i].expected)
        return None if verdict.outcome is Outcome.CORRECT else without_addresses(format_feedback(verdict))

    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for feedback in pool.map(check, jobs, chunksize=16):
            out.append(feedback)
            if progress is not None:
                progress(1)
    return out


def collect_failures(tasks: list[Task], jobs: list[tuple[int, str]], feedback: list[str | None]) -> list[TaskData]:
    """Each task with its failed candidates, in candidate order (distractors first)."""
    out = [TaskData(task) for task in tasks]
    for (i, code), text in zip(jobs, feedback, strict=True):
        if text is not None:
            out[i].failures.append((code, text))
    return out


def verify_candidates(tasks: list[Task], verifier, seed: int, workers: int = 2, progress=None) -> list[TaskData]:
    """Corrupt each task's solution, run every candidate through the verifier, keep the failures."""
    jobs = candidate_jobs(tasks, seed)
    return collect_failures(tasks, jobs, check_jobs(jobs, tasks, verifier, workers, progress))


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


def assemble(t: TokenizedTask, failures: list[int]) -> Episode:
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


def fitted(t: TokenizedTask, failures: list[int], max_len: int) -> Episode:
    """The episode with as many of the chosen failures as fit in `max_len` positions."""
    while True:
        inputs, targets = assemble(t, failures)
        if len(inputs) <= max_len or not failures:
            return inputs, targets
        failures = failures[:-1]


class EpisodeStream:
    """Endless shuffled episodes: each pass over the tasks (underspecified ones CONVENTION_WEIGHT times)
    draws fresh failure combinations. Its position is plain data (`state_dict`), so a resumed run
    continues with exactly the episodes an uninterrupted one would have seen."""

    def __init__(self, tasks: list[TokenizedTask], seed: int, repair_fraction: float, max_len: int):
        self.tasks, self.repair_fraction, self.max_len = tasks, repair_fraction, max_len
        self.weighted = [i for i, t in enumerate(tasks) for _ in range(CONVENTION_WEIGHT if t.distractor_count else 1)]
        self.rng = random.Random(seed)
        self.order: list[int] = []  # this pass's task order
        self.pos = 0  # episodes of this pass already drawn

    def __iter__(self) -> Iterator[Episode]:
        return self

    def __next__(self) -> Episode:
        if self.pos == len(self.order):  # a new pass; the shuffle and the failure draws share one rng
            self.order = list(self.weighted)
            self.rng.shuffle(self.order)
            self.pos = 0
        i = self.order[self.pos]
        self.pos += 1
        return fitted(self.tasks[i], sample_failures(self.tasks[i], self.rng, self.repair_fraction), self.max_len)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if any(i >= len(self.tasks) for i in state["order"]):
            raise ValueError("the saved episode order names tasks this data does not have; the data differ")
        self.rng.setstate(state["rng"])
        self.order, self.pos = list(state["order"]), state["pos"]


def fixed_episodes(tasks: Iterable[TokenizedTask], seed: int, max_len: int) -> list[Episode]:
    """Validation episodes: every task once directly and once with one failure (if it has one)."""
    rng = random.Random(seed)
    out = []
    for t in tasks:
        out.append(assemble(t, []))
        if t.failures:
            out.append(fitted(t, [rng.randrange(len(t.failures))], max_len))
    return out


class BatchStream:
    """Endless global batches of `batch_size` episodes. Episodes are grouped by length within windows
    of `bucket` batches so little compute goes to padding (each batch comes out sorted by length); the
    batch order within a window is shuffled. Its position is plain data (`state_dict`)."""

    def __init__(self, episodes: EpisodeStream, batch_size: int, seed: int, bucket: int = 16):
        self.episodes, self.batch_size, self.bucket = episodes, batch_size, bucket
        self.rng = random.Random(seed)
        self.pending: list[list[Episode]] = []  # the current window's batches not yet handed out

    def __iter__(self) -> Iterator[list[Episode]]:
        return self

    def __next__(self) -> list[Episode]:
        if not self.pending:
            window = [next(self.episodes) for _ in range(self.batch_size * self.bucket)]
            window.sort(key=lambda e: len(e[0]))
            self.pending = [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
            self.rng.shuffle(self.pending)
        return self.pending.pop(0)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "pending": list(self.pending), "episodes": self.episodes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.pending = list(state["pending"])
        self.episodes.load_state_dict(state["episodes"])


def shard(batch: list[Episode], rank: int, world_size: int, grad_accum: int) -> list[list[Episode]]:
    """This rank's micro-batches of a global batch: episodes rank, rank + W, ... (the batch is sorted by
    length, so each rank gets a like share of tokens), cut into `grad_accum` runs of similar length."""
    mine = batch[rank::world_size]
    n = len(mine)
    return [mine[k * n // grad_accum : (k + 1) * n // grad_accum] for k in range(grad_accum)]
