"""The batched decode step's attention as a small C++ kernel (csrc/decode_attention.cpp), built on first
use with torch's extension builder and registered as the op `torch.ops.nanocodegen.decode_attention`.

Why: the batched agents' decode step attends each of up to a few hundred cache rows over its own
context. As tensor ops (compiled or not) that reads every row up to the longest row's length and costs
~14-25 ns per key and head here; the kernel stops at each row's length and streams its keys and values
once (~5 ns at 256 rows), which makes attention, the largest cost of a batched step, ~3-4x cheaper.
See benchmarks/engine.py for the end-to-end figures.

The build needs a C++ compiler and ninja (`pip install ninja`, a dependency of this package); it takes
~10 s once per machine and is cached by torch (in $TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions).
Where it cannot be built, `load()` says why once and the model falls back to the tensor-op attention,
same results up to fp32 rounding. NANOCODEGEN_ATTENTION_KERNEL=0 turns the kernel off (to compare).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
DISABLE_VARIABLE = "NANOCODEGEN_ATTENTION_KERNEL"

# The vector instructions ATen's Vectorized<float> is compiled for, by the CPU capability torch detected
# (the same choice inductor makes for its generated kernels).
_CAPABILITY_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


@functools.cache
def _build() -> str | None:
    """Build and load the kernel; None on success, else the reason it is unavailable."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return f"turned off by {DISABLE_VARIABLE}=0"
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # pip's ninja, where the environment's scripts are not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # the build below fails and says so
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++17", *_CAPABILITY_FLAGS.get(capability, [])]
    try:
        cpp_extension.load(
            name=f"nanocodegen_decode_attention_{capability.lower()}",
            sources=[str(SOURCE)],
            extra_cflags=flags,
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: the tensor-op attention serves
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[-1] if lines else ''}"
    torch.library.register_fake("nanocodegen::decode_attention", _output_shape)
    return None


def _output_shape(q, kv, rows, lengths, scale):
    """What torch.compile traces the op with: (R, H, D) queries in, (R, H, D) out."""
    return q.new_empty(q.shape)


def load() -> bool:
    """Build (once per machine) and load the kernel; False, with one warning naming the cause and the
    fix, where it cannot be built."""
    reason = _build()
    if reason is not None and not reason.startswith("turned off"):
        _warn_once(reason)
    return reason is None


def supports(head_dim: int) -> bool:
    """Whether the kernel is loaded (building it on first use) and takes heads of this size: a whole
    number of vectors (16 floats with AVX-512, 8 otherwise), at most 16 of them."""
    width = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8
    return head_dim % width == 0 and head_dim <= 16 * width and load()


def status() -> str:
    """'active', or why the kernel is not in use (for `nanocodegen doctor` and run provenance)."""
    reason = _build()
    return "active" if reason is None else f"unavailable ({reason})"


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"the batched decode attention kernel could not be built ({reason}); falling back to tensor-op "
        "attention, ~3x slower in batched decoding. Fix: install a C++ compiler (g++) and `pip install ninja`; "
        f"set {DISABLE_VARIABLE}=0 to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def decode_attention(
    q: torch.Tensor, kv: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """(R, H, D) fp32 queries over a (2, B, H, L, D) cache (keys, values; fp32 or bf16): query r attends to
    positions [0, lengths[r]) of cache row rows[r]. Returns (R, H, D) fp32. Call `load()` first."""
    return torch.ops.nanocodegen.decode_attention(q, kv, rows, lengths, scale)
