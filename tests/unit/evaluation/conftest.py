from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from studbook_trainer.evaluation import bytes_digest  # noqa: E402

from . import _fixtures as fx  # noqa: E402


@dataclass(frozen=True)
class Models:
    base: Path
    sentiment: Path
    topic: Path
    sentiment_from_topic: Path
    merged: Path
    uniform: Path


@dataclass(frozen=True)
class Data:
    root: Path
    files: dict[str, Path]
    train: dict[str, list[dict[str, Any]]]

    def dataset(self, name: str, role: str, **extra: Any) -> dict[str, Any]:
        path = self.files[name]
        return {
            "name": name,
            "uri": path.as_uri(),
            "digest": bytes_digest(path.read_bytes()),
            "role": role,
            "task": "classification",
            **extra,
        }


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("eval-data")
    sizes = {"train": 120, "optimize": 32, "gate": 48, "holdout": 24}
    sentiment = fx.splits("sentiment", sizes)
    topic = fx.splits("topic", sizes)
    files = {
        "sentiment-optimize": fx.write_jsonl(root / "s-opt.jsonl", sentiment["optimize"]),
        "sentiment-gate": fx.write_jsonl(root / "s-gate.jsonl", sentiment["gate"]),
        "topic-gate": fx.write_jsonl(root / "t-gate.jsonl", topic["gate"]),
        "mixed-holdout": fx.write_jsonl(
            root / "holdout.jsonl",
            [r for pair in zip(sentiment["holdout"], topic["holdout"], strict=True) for r in pair],
        ),
    }
    return Data(root, files, {"sentiment": sentiment["train"], "topic": topic["train"]})


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Models:
    """Specialists trained once per session: heads on MiniLM's pooled features."""
    root = tmp_path_factory.mktemp("eval-models")
    base = fx.base_classifier(root / "base")
    s_train, t_train = data.train["sentiment"], data.train["topic"]
    features = fx.pooled_features(base, [r["text"] for r in s_train + t_train])
    s_features, t_features = features[: len(s_train)], features[len(s_train) :]
    s_labels = [r["label"] for r in s_train]
    sentiment = fx.head_specialist(base, root / "sentiment", s_features, s_labels)
    topic = fx.head_specialist(base, root / "topic", t_features, [r["label"] for r in t_train])
    # A descendant of the topic specialist, trained on sentiment only: it forgets topics.
    from_topic = fx.head_specialist(topic, root / "sentiment-from-topic", s_features, s_labels)
    merged = fx.weighted_merge(
        base, [sentiment, topic], root / "task-arithmetic", [1.0, 1.0], task_arithmetic=True
    )
    uniform = fx.weighted_merge(base, [sentiment, topic], root / "uniform", [0.5, 0.5])
    return Models(base, sentiment, topic, from_topic, merged, uniform)


def suite_spec(data: Data, **overrides: Any) -> dict[str, Any]:
    """The sentiment/topic suite of examples/suite.yaml, on the session's data."""
    spec: dict[str, Any] = {
        "version": "1.0.0",
        "datasets": [
            data.dataset("sentiment-optimize", "optimize"),
            data.dataset("sentiment-gate", "gate"),
            data.dataset("topic-gate", "gate"),
            data.dataset("mixed-holdout", "holdout"),
        ],
        "metrics": [
            {"name": "accuracy", "dataset": "sentiment-gate", "direction": "maximize"},
            {"name": "macro_f1", "dataset": "sentiment-gate", "direction": "maximize"},
            {"name": "accuracy", "dataset": "topic-gate", "direction": "maximize"},
            {"name": "ece", "dataset": "sentiment-gate", "direction": "minimize"},
            {"name": "latency_ms", "dataset": "sentiment-gate", "direction": "minimize"},
            {"name": "size_bytes", "dataset": "sentiment-gate", "direction": "minimize"},
            {"name": "accuracy", "dataset": "mixed-holdout", "direction": "maximize"},
        ],
        "objective": ["sentiment-gate", "topic-gate"],
        "nicheProbes": [
            {
                "name": "sentiment",
                "taxonomy": "classification/sentiment",
                "dataset": "sentiment-gate",
            },
            {"name": "topic", "taxonomy": "classification/topic", "dataset": "topic-gate"},
        ],
        "thresholds": [
            {"metric": "accuracy", "dataset": "sentiment-gate", "min": 0.7},
            {"metric": "ece", "dataset": "sentiment-gate", "max": 0.5},
        ],
        "calibrationBins": 10,
        "abstainBelow": 0.55,
        "bootstrap": {"samples": 200, "confidence": 0.95},
        "seed": 7,
    }
    spec.update(overrides)
    return spec
