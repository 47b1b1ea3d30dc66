"""Several processes: torchrun's environment, and a real 2-process gloo job against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from nanocodegen.checkpoint import load_checkpoint, read_train_log
from nanocodegen.config import preset_configs
from nanocodegen.distributed import choose_device, read_env
from nanocodegen.train import train
from nanocodegen.train_state import STATE_FILE

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_environment_is_read_or_refused():
    assert read_env({}) == (0, 0, 1, 1)
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "1"}
    assert read_env(env) == (3, 1, 4, 2)
    with pytest.raises(ValueError, match="LOCAL_RANK, WORLD_SIZE not"):
        read_env({"RANK": "0"})
    with pytest.raises(ValueError, match="out of range"):
        read_env({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    assert choose_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        choose_device("cuda")


def test_two_processes_under_torchrun_train_like_one(tmp_path):
    """`torchrun --nproc_per_node=2 -m nanocodegen train` on CPU (gloo), two micro-batches per rank,
    against the same settings on one process: the same batches (token counts match exactly) and the
    same loss curve up to float noise, since the loss is normalised over the global batch."""
    flags = ["--max-steps", "10", "--grad-accum", "2", "--save-interval", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "nanocodegen", "train", "--preset", "smoke", *flags, "--out", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    _, _, config = load_checkpoint(tmp_path / "ddp")
    assert config["result"]["processes"] == 2 and config["result"]["complete"]
    assert config["command"].startswith("nanocodegen train --preset smoke")
    assert not (tmp_path / "ddp" / STATE_FILE).exists()

    model_cfg, cfg = preset_configs("smoke", train_overrides={"max_steps": 10, "out": str(tmp_path / "one")})
    train(model_cfg, cfg, console=Console(quiet=True))
    two, one = read_train_log(tmp_path / "ddp"), read_train_log(tmp_path / "one")
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-3)
    assert two[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-3)
    assert json.loads((tmp_path / "ddp" / "tokenizer.json").read_text()) == json.loads(
        (tmp_path / "one" / "tokenizer.json").read_text()
    )
