"""Tasks: plain records, the sketch's seed bank, suites, and JSONL I/O.

A task asks for a program that leaves its answer in a variable named `result`; it is solved when
`str(result) == expected`, as the original sketch compares. HumanEval-style tasks instead carry a
`test` and an `entry_point` and are verified by running the tests.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

# The sketch's eight tasks, unchanged: (description, expected_output).
TASK_BANK: list[tuple[str, str]] = [
    ("Return the sum of [1, 2, 3, 4, 5]", "15"),
    ("Return 'hello' reversed", "olleh"),
    ("Return the length of 'benchmark'", "9"),
    ("Return 2 ** 10", "1024"),
    ("Return sorted([3, 1, 4, 1, 5])", "[1, 1, 3, 4, 5]"),
    ("Return max(10, 20, 5)", "20"),
    ("Return 'ab' * 3", "ababab"),
    ("Return list(range(5))", "[0, 1, 2, 3, 4]"),
]

# Reference solutions for the seed bank, used to check the expected values above.
SEED_SOLUTIONS: list[str] = [
    "result = sum([1, 2, 3, 4, 5])",
    "result = 'hello'[::-1]",
    "result = len('benchmark')",
    "result = 2 ** 10",
    "result = sorted([3, 1, 4, 1, 5])",
    "result = max(10, 20, 5)",
    "result = 'ab' * 3",
    "result = list(range(5))",
]


class TaskFileError(ValueError):
    """A task file could not be read; the message names the file, the line and the fix."""


@dataclass
class Task:
    id: str
    prompt: str
    expected: str = ""  # str(result) of a correct program; empty for test-verified tasks
    solution: str = ""  # a reference program (may be empty for user task files)
    family: str = ""
    tier: int = 0  # 1 = one step, 2 = two steps, 3 = hardest (multi-step or underspecified)
    phrasing: str = ""  # which phrasing of its family the prompt uses, e.g. "sum_list/L0-C2-T0"
    held_out: bool = False  # the phrasing is one kept out of the training tasks
    split: str = ""
    distractors: list[str] = field(default_factory=list)  # plausible wrong programs (other readings)
    test: str = ""  # HumanEval-style `def check(candidate): ...`
    entry_point: str = ""  # function name the test calls

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


_TASK_FIELDS = {f.name for f in fields(Task)}


def seed_tasks() -> list[Task]:
    return [
        Task(id=f"seed/{i}", prompt=p, expected=e, solution=s, family="seed", tier=1, split="seed")
        for i, ((p, e), s) in enumerate(zip(TASK_BANK, SEED_SOLUTIONS, strict=True))
    ]


def task_from_dict(obj: object, where: str) -> Task:
    """Build a Task from a decoded JSON object; `where` ("file.jsonl:3") goes into error messages."""
    if not isinstance(obj, dict):
        raise TaskFileError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    missing = [k for k in ("id", "prompt") if k not in obj]
    if "expected" not in obj and "test" not in obj:
        missing.append("expected")
    if missing:
        raise TaskFileError(
            f"{where}: missing field(s) {', '.join(missing)}; each line needs at least "
            '{"id": ..., "prompt": ..., "expected": ...}'
        )
    for key in ("id", "prompt", "expected"):
        if key in obj and not isinstance(obj[key], str):
            raise TaskFileError(
                f"{where}: field {key!r} must be a string (expected is the str() of the result, "
                f'e.g. "15"), got {type(obj[key]).__name__}'
            )
    return Task(**{k: v for k, v in obj.items() if k in _TASK_FIELDS})


def read_tasks(path: str | Path) -> list[Task]:
    """Read a JSONL task file; raises TaskFileError naming the file and line of any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such task file; pass a JSONL file with one task per line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: cannot read task file ({e}); it must be UTF-8 JSONL") from None
    tasks: list[Task] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        task = task_from_dict(obj, where)
        if task.id in seen:
            raise TaskFileError(f"{where}: duplicate task id {task.id!r}; ids must be unique")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise TaskFileError(f"{path}: the file holds no tasks")
    return tasks


def write_tasks(path: str | Path, tasks: list[Task]) -> None:
    Path(path).write_text("".join(t.to_json() + "\n" for t in tasks), encoding="utf-8")


def packaged_data(name: str) -> Path:
    """Path of a data file shipped inside the package (nanocodegen/data/NAME)."""
    return Path(str(resources.files("nanocodegen") / "data" / name))


# Suite name -> how to load it. The synthetic splits are generated by `nanocodegen.families`
# (`python -m nanocodegen.families --write`) and shipped, so every run scores the same tasks.
SUITES = ("seed", "synthetic", "synthetic-val", "humaneval")


def load_suite(name: str) -> list[Task]:
    """Load a named suite. `synthetic` is the synthetic test split."""
    if name == "seed":
        return seed_tasks()
    if name in ("synthetic", "synthetic-test"):
        return read_tasks(packaged_data("synthetic_test.jsonl"))
    if name == "synthetic-val":
        return read_tasks(packaged_data("synthetic_val.jsonl"))
    if name == "humaneval":
        from nanocodegen.humaneval import humaneval_tasks

        return humaneval_tasks()
    raise ValueError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}")
