"""Two CPU kernels in C++ (csrc/), built on first use with torch's extension builder and registered as
torch ops, each for a case the library's own kernels serve poorly here (measured in benchmarks/engine.py):

- `torch.ops.nanocodegen.decode_attention`: the batched agents' attention (csrc/decode_attention.cpp).
  Up to a few hundred cache rows, each over its own context: as tensor ops (compiled or not) that reads
  every row up to the longest row's length, ~14-25 ns per key and head here; the kernel stops at each
  row's length and streams its keys and values once (~5 ns), so attention, the largest cost of a
  batched step, gets ~2-3x cheaper.
- `torch.ops.nanocodegen.stream_linear`: a linear layer for one to four tokens whose weight does not fit
  in the caches (csrc/stream_linear.cpp): the batch-1 decode of a model too big for L3, bound by
  streaming weights from memory, where MKL's matrix-vector product reads ~19 GiB/s and this one ~33-35
  (a read-only sum's rate), in eager and compiled steps.

The build needs a C++ compiler and ninja (`pip install ninja`, a dependency of this package); it takes
~10-15 s once per machine and is cached by torch (in $TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions).
Where it cannot be built, `load()` says why once and the model falls back to tensor ops, same results up
to fp32 rounding. NANOCODEGEN_CPU_KERNELS=0 turns the kernels off (to compare).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("decode_attention.cpp", "stream_linear.cpp")]
DISABLE_VARIABLE = "NANOCODEGEN_CPU_KERNELS"

# The vector instructions ATen's Vectorized<float> is compiled for, by the CPU capability torch detected
# (the same choice inductor makes for its generated kernels).
_CAPABILITY_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


@functools.cache
def _build() -> str | None:
    """Build and load the kernels; None on success, else the reason they are unavailable."""
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
            name=f"nanocodegen_kernels_{capability.lower()}",
            sources=[str(source) for source in SOURCES],
            extra_cflags=flags,
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: the tensor ops serve
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[-1] if lines else ''}"
    # What torch.compile traces the ops with: their outputs' shapes
    torch.library.register_fake("nanocodegen::decode_attention",
                                lambda q, kv, rows, lengths, scale: q.new_empty(q.shape))
    torch.library.register_fake("nanocodegen::stream_linear",
                                lambda x, weight, bias: x.new_empty(x.size(0), weight.size(0)))
    return None


def load() -> bool:
    """Build (once per machine) and load the kernels; False, with one warning naming the cause and the
    fix, where they cannot be built."""
    reason = _build()
    if reason is not None and not reason.startswith("turned off"):
        _warn_once(reason)
    return reason is None


def _vector_floats() -> int:
    return 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8


def supports(head_dim: int) -> bool:
    """Whether the kernels are loaded (building them on first use) and the attention kernel takes heads
    of this size: a whole number of vectors (16 floats with AVX-512, 8 otherwise), at most 16 of them."""
    width = _vector_floats()
    return head_dim % width == 0 and head_dim <= 16 * width and load()


STREAM_MIN_BYTES = 2**20  # a weight this big is read from memory, not cache, in every token's step


def streams(weight: torch.Tensor) -> bool:
    """Whether `stream_linear` should serve this (out, in) weight: fp32 on the CPU, at least
    STREAM_MIN_BYTES, `in` a whole number of 4 vectors, and the kernels loaded."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
            and weight.numel() * 4 >= STREAM_MIN_BYTES and weight.size(1) % (4 * _vector_floats()) == 0 and load())


def status() -> str:
    """'active', or why the kernels are not in use (run provenance)."""
    reason = _build()
    return "active" if reason is None else f"unavailable ({reason})"


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"nanocodegen's CPU kernels could not be built ({reason}); falling back to tensor ops, ~1.5-3x "
        "slower in batched decoding. Fix: install a C++ compiler (g++) and `pip install ninja`; "
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


def stream_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(R, in) @ (out, in)^T + bias -> (R, out), fp32, 1 <= R <= 4, for weights `streams` accepts."""
    return torch.ops.nanocodegen.stream_linear(x, weight, bias)
