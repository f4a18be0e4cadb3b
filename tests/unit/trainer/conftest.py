from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from ._models import minilm_dir, tiny_gpt2, tiny_llama, train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def llama_a(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama-a"), tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def llama_b(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama-b"), tokenizer_dir, seed=2)


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama-base"), tokenizer_dir, seed=3)


@pytest.fixture(scope="session")
def gpt2_a(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2-a"), tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def minilm() -> Path:
    path = minilm_dir()
    assert (path / "model.safetensors").is_file(), path
    return path
