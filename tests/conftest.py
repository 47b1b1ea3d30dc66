import os
import time

import pytest
import torch

from nanocodegen.model import ModelConfig, NanoCodeGenAgent


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(vocab_size=97, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, retry_conditioning=False)


@pytest.fixture
def tiny_model(tiny_config) -> NanoCodeGenAgent:
    torch.manual_seed(0)
    return NanoCodeGenAgent.from_config(tiny_config).eval()


def _wait_gone(pid: int, seconds: float = 3.0) -> bool:
    """True once process `pid` no longer exists (polled for up to `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def wait_gone():
    return _wait_gone
