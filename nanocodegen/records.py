"""Plain records passed between stages: outcomes, attempts, episodes.

Everything here is a dataclass that turns into JSON with `asdict`; results files are lists of these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    """What happened to one attempt. The string values are what results files store."""

    CORRECT = "correct"
    WRONG_OUTPUT = "wrong_output"
    SYNTAX_ERROR = "syntax_error"
    UNSAFE = "unsafe"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    CRASHED = "crashed"
    # Set by the agent, not the verifier: the next attempt would not fit the model's context.
    CONTEXT_OVERFLOW = "context_overflow"


@dataclass
class Verdict:
    """The verifier's judgement of one program.

    `output` is `str(result)` when the program ran to the end (None otherwise); `error` is a short text
    fit to show the model as feedback ("" when correct).
    """

    outcome: Outcome
    output: str | None = None
    error: str = ""
    stdout: str = ""
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.CORRECT


@dataclass
class AttemptRecord:
    attempt: int  # 1-based
    context_tokens: int  # prompt length fed to the model for this attempt
    new_tokens: int  # tokens generated
    prefill_tokens: int  # prompt tokens actually computed in prefill (the rest came from the cache)
    cached_tokens: int  # prompt tokens reused from the KV cache
    prefill_ms: float
    decode_ms: float
    ttft_ms: float  # attempt start -> first generated token
    verify_ms: float
    outcome: str
    kv_cache_bytes: int
    code: str
    output: str | None
    feedback: str  # what was appended to the prompt after this attempt ("" if none)


@dataclass
class EpisodeRecord:
    id: str
    prompt: str
    expected: str
    solved: bool
    attempts: list[AttemptRecord] = field(default_factory=list)
    attempts_to_correct: int | None = None
    total_prompt_tokens: int = 0
    total_new_tokens: int = 0
    wall_ms: float = 0.0
    suite: str = ""
    family: str = ""
    tier: int = 0

    def as_dict(self) -> dict:
        """`asdict(self)`, without its deep copy of every value: the fields are plain values, and a
        batched run writes hundreds of these on its main thread (asdict took ~7 % of it)."""
        return {**vars(self), "attempts": [dict(vars(a)) for a in self.attempts]}
    held_out: bool = False  # the task's phrasing was held out of training
