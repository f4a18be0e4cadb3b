from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ._models import lm_rows, sentiment_rows, topic_rows, write_jsonl

    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "sentiment.jsonl", sentiment_rows(192, seed=1))
    write_jsonl(d / "sentiment-test.jsonl", sentiment_rows(96, seed=2))
    write_jsonl(d / "topic.jsonl", topic_rows(192, seed=3))
    write_jsonl(d / "topic-test.jsonl", topic_rows(96, seed=4))
    write_jsonl(d / "counting.jsonl", lm_rows(128, seed=5))
    return d


@pytest.fixture(scope="session")
def datasets(data_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in data_dir.glob("*.jsonl")}


@pytest.fixture(scope="session")
def sentiment_specialist(
    tmp_path_factory: pytest.TempPathFactory, minilm: Path, datasets: dict[str, Path]
) -> Path:
    """MiniLM fine-tuned on the sentiment task (shared by several operator tests)."""
    from studbook_trainer.operators import LocalParent, RunContext, get_operator
    from studbook_trainer.operators.simple import FinetunePlan

    out = tmp_path_factory.mktemp("sentiment-specialist")
    plan = FinetunePlan(
        task="sequence-classification",
        datasets=("sentiment",),
        steps=24,
        learning_rate=1e-4,
        batch_size=16,
        num_labels=2,
        seed=0,
    )
    get_operator("finetune").run(
        plan, RunContext([LocalParent("minilm", minilm)], out, datasets, device="cpu")
    )
    return out
