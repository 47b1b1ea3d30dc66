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
