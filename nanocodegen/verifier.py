"""CodeVerifier: size cap, syntax check, safety policy, sandboxed run, output comparison.

    with CodeVerifier(workers=2) as v:
        v.verify("result = 2 ** 10", "1024")   # Verdict(outcome=Outcome.CORRECT, output="1024", ...)
        v.execute("result = sum([1, 2, 3])")   # (True, "6"), the original sketch's API
    CodeVerifier.execute("result = 1")         # also works on the class, with a shared default pool

The safety policy is a lint, not the security boundary: it keeps the model's programs inside a small,
task-shaped language and gives it a clear message when they stray. Isolation is the sandbox's job
(nanocodegen.sandbox: a fresh process per program, OS limits, Landlock). Programs are only parsed here,
never run.

Feedback texts (`Verdict.error`, shown to the model) are short and deterministic:
  correct        ""
  wrong_output   "result = 16" (str(result) cut to 60 characters; "result = None (no variable named
                 result)" when the program never set it)
  syntax_error   "invalid syntax (line 1)", "unexpected indent (line 2)",
                 "source code cannot contain null bytes", "the program is too deeply nested to compile"
  unsafe         "import statements are not allowed (line 1)", "eval() is not allowed (line 2)",
                 "attribute __class__ is not allowed (line 1)", "name __builtins__ is not allowed (line 1)",
                 "the program is too long (25000 characters; the limit is 20000)"
  runtime_error  "ZeroDivisionError: division by zero (line 1)", "SystemExit (line 3)"
  timeout        "exceeded the time limit of 100 ms"
  memory_limit   "exceeded the memory limit of 256 MiB (line 1)"
  output_limit   "printed more than 1 MiB of output"
  crashed        "the process exited early with status 0", "the process was killed by signal SIGSEGV"
"""

from __future__ import annotations

import ast
import threading
import types
import warnings

from nanocodegen.records import Outcome, Verdict
from nanocodegen.sandbox import Limits, RunResult, Sandbox
from nanocodegen.sandbox_child import syntax_error_text, with_line
from nanocodegen.tasks import TASK_BANK

MAX_CODE_CHARS = 20_000  # far above any task's solution; bounds the parser's work in this process
WRONG_OUTPUT_CHARS = 60  # how much of a wrong result the feedback shows

# Builtins that reach outside the task's little language: code execution, introspection, I/O.
FORBIDDEN_NAMES = frozenset(
    {"exec", "eval", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals",
     "locals", "vars", "breakpoint", "input", "help", "exit", "quit"}
)  # fmt: skip
# Attributes that walk from an object to frames, code, globals or builtins (the classic escapes).
FORBIDDEN_ATTRIBUTES = frozenset(
    {"gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
     "ag_await", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "tb_frame",
     "tb_next", "co_code", "co_consts", "co_names"}
)  # fmt: skip
# Dunder attributes that are plain data or the usual constructor call; every other dunder is refused
# (__class__, __subclasses__, __globals__, __builtins__, __self__, __code__, __dict__, ...).
ALLOWED_DUNDER_ATTRIBUTES = frozenset({"__init__", "__name__", "__qualname__", "__doc__"})


# ast.parse warns (SyntaxWarning, DeprecationWarning) about dubious literals in the code it reads. Those
# are the candidate's business, not the caller's log's, so they are silenced for this pseudo-file only.
# (A filter, not catch_warnings(): that swaps global state and is not thread-safe.)
_FILENAME = "<candidate>"
warnings.filterwarnings("ignore", module=_FILENAME)


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _parse(code_str: str) -> tuple[ast.Module | None, str]:
    """(tree, "") or (None, the syntax error text). Catches every way the parser refuses input."""
    try:
        return ast.parse(code_str, filename=_FILENAME), ""
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return None, syntax_error_text(e)


def _policy_violation(tree: ast.Module) -> str:
    """The first (by position) construct the policy refuses, as feedback text; "" if none."""
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):  # iterative: deep trees cannot overflow the stack here
        text = ""
        if isinstance(node, ast.Import | ast.ImportFrom):
            text = "import statements are not allowed"
        elif isinstance(node, ast.Name):
            if node.id in FORBIDDEN_NAMES:
                text = f"{node.id}() is not allowed"
            # `__name__` reads, and dunder assignments in class bodies (__slots__, __hash__ = None), are
            # fine; reads of __builtins__, __loader__, __spec__, __class__ ... are escapes.
            elif _is_dunder(node.id) and node.id != "__name__" and not isinstance(node.ctx, ast.Store):
                text = f"name {node.id} is not allowed"
            elif node.id == "__builtins__":
                text = "name __builtins__ is not allowed"
        elif isinstance(node, ast.Attribute):
            text = _attribute_violation(node.attr)
        elif isinstance(node, ast.MatchClass):  # `case C(__class__=x)` reads attributes too
            text = next(filter(None, map(_attribute_violation, node.kwd_attrs)), "")
        if text:
            line = getattr(node, "lineno", 0)
            found.append((line, getattr(node, "col_offset", 0), with_line(text, line)))
    return min(found)[2] if found else ""


def _attribute_violation(attr: str) -> str:
    if attr in FORBIDDEN_ATTRIBUTES or (_is_dunder(attr) and attr not in ALLOWED_DUNDER_ATTRIBUTES):
        return f"attribute {attr} is not allowed"
    return ""


class _instance_or_class:
    """Method decorator: on an instance it is a normal method; on the class (`CodeVerifier.execute(code)`,
    as the original sketch calls it) it runs on a shared default verifier, created on first use."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, owner):
        return types.MethodType(self.func, obj if obj is not None else owner.default())


class CodeVerifier:
    """Checks and runs generated programs. Thread-safe; runs up to `workers` programs at once.

    The sandbox pool starts on the first run. Use as a context manager or call close(); still-open pools
    are closed at interpreter exit.
    """

    TASK_BANK = TASK_BANK

    _default: CodeVerifier | None = None
    _default_lock = threading.Lock()

    def __init__(self, workers: int = 1, limits: Limits | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.limits = workers, limits or Limits()
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> CodeVerifier:
        """The shared verifier that class-level calls (`CodeVerifier.execute(code)`) use."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(self.workers, self.limits)
            return self._sandbox

    @staticmethod
    def check_syntax(code_str: str) -> tuple[bool, str]:
        """(True, "OK") if the code parses, else (False, e.g. "invalid syntax (line 1)")."""
        tree, error = _parse(code_str)
        return (True, "OK") if tree is not None else (False, error)

    @staticmethod
    def check_safety(code_str: str) -> tuple[bool, str]:
        """(True, "OK") if the policy allows the code, else (False, e.g. "import statements are not
        allowed (line 1)"). Code that does not parse fails with its syntax error."""
        tree, error = _parse(code_str)
        if tree is None:
            return False, error
        violation = _policy_violation(tree)
        return (False, violation) if violation else (True, "OK")

    @_instance_or_class
    def execute(self, code_str: str, timeout_ms: int = 100) -> tuple[bool, str]:
        """(True, str(result)) if the program ran to the end, else (False, the reason), as the sketch."""
        rejected = self._precheck(code_str)
        if rejected is not None:
            return False, rejected.error
        run = self.sandbox.run(code_str, timeout_ms)
        return (True, run.output) if run.ok else (False, run.error)

    @_instance_or_class
    def verify(self, code_str: str, expected: str, timeout_ms: int = 100) -> Verdict:
        """Check, run and judge one program: CORRECT iff it runs and str(result) == expected."""
        rejected = self._precheck(code_str)
        if rejected is not None:
            return rejected
        return _judge(self.sandbox.run(code_str, timeout_ms), expected)

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    def __enter__(self) -> CodeVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _precheck(code_str: str) -> Verdict | None:
        """The verdict for a program refused before it runs (too long, unparsable, unsafe), else None."""
        if not isinstance(code_str, str):
            raise TypeError(f"code_str must be a str, got {type(code_str).__name__}")
        if len(code_str) > MAX_CODE_CHARS:
            return Verdict(
                Outcome.UNSAFE,
                error=f"the program is too long ({len(code_str)} characters; the limit is {MAX_CODE_CHARS})",
            )
        tree, error = _parse(code_str)
        if tree is None:
            return Verdict(Outcome.SYNTAX_ERROR, error=error)
        violation = _policy_violation(tree)
        return Verdict(Outcome.UNSAFE, error=violation) if violation else None


def _judge(run: RunResult, expected: str) -> Verdict:
    metrics = {"stdout": run.stdout, "cpu_ms": run.cpu_ms, "wall_ms": run.wall_ms}
    metrics["peak_rss_bytes"] = run.peak_rss_bytes
    if not run.ok:
        return Verdict(Outcome(run.status), error=run.error, **metrics)
    if run.output == expected:
        return Verdict(Outcome.CORRECT, output=run.output, **metrics)
    return Verdict(Outcome.WRONG_OUTPUT, output=run.output, error=wrong_output_text(run), **metrics)


def wrong_output_text(run: RunResult) -> str:
    if not run.has_result:
        return "result = None (no variable named result)"
    shown = run.output
    if len(shown) > WRONG_OUTPUT_CHARS:
        shown = shown[: WRONG_OUTPUT_CHARS - 3] + "..."
    return "result = " + shown.replace("\n", "\\n")
