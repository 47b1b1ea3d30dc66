"""Judge a task's program the way its suite asks, and check a whole suite's reference solutions.

    nanocodegen verify --suite humaneval --canonical --workers 2

`verify_task` is the one place that knows the two kinds of task: those judged by `expected` output
(the seed and synthetic suites: the code is the whole program) and those judged by tests (HumanEval:
the code completes the prompt). The agent and the `verify` command both call it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from nanocodegen.humaneval import program_for
from nanocodegen.records import Verdict
from nanocodegen.tasks import Task
from nanocodegen.verifier import CodeVerifier


def verify_task(verifier: CodeVerifier, task: Task, code: str, timeout_ms: int) -> Verdict:
    """The verdict on `code` for `task`: its tests if it has them, else its expected output."""
    if task.test:
        return verifier.verify_tests(program_for(task, code), task.test, task.entry_point, timeout_ms)
    return verifier.verify(code, task.expected, timeout_ms)


@dataclass
class SuiteCheck:
    """The reference solutions of some tasks, checked: verdicts in task order, and how fast."""

    tasks: list[Task]
    verdicts: list[Verdict]
    workers: int
    seconds: float  # wall time of the timed checks (servers already warm)
    isolation: dict = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(v.ok for v in self.verdicts)

    @property
    def checks_per_s(self) -> float:
        return len(self.verdicts) / self.seconds if self.seconds else 0.0

    def failures(self) -> list[tuple[Task, Verdict]]:
        return [(t, v) for t, v in zip(self.tasks, self.verdicts, strict=True) if not v.ok]


def check_solutions(
    tasks: list[Task], workers: int = 1, timeout_ms: int = 3000, allow_weak_isolation: bool = False
) -> SuiteCheck:
    """Run every task's reference solution through a fresh CodeVerifier with `workers` sandbox servers,
    from as many threads. Each server runs one unmeasured check first (start-up, preloading), so the
    timing is of warm servers, as in a benchmark run."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    missing = [t.id for t in tasks if not t.solution]
    if missing:
        raise ValueError(f"tasks without a reference solution: {', '.join(missing[:5])}; check another suite")
    with CodeVerifier(workers, allow_weak_isolation=allow_weak_isolation) as verifier:
        check = lambda task: verify_task(verifier, task, task.solution, timeout_ms)  # noqa: E731
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(check, tasks[:1] * 2 * workers))  # warm every server (they are handed out in turn)
            t0 = time.perf_counter()
            verdicts = list(pool.map(check, tasks))
            seconds = time.perf_counter() - t0
        return SuiteCheck(tasks, verdicts, workers, seconds, verifier.isolation)
