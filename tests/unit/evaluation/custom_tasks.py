"""User-defined evaluation tasks for the tests (``customTask: module:function``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from studbook_trainer.evaluation import Classifier, TaskContext


def true_label_probability(
    model: Classifier, examples: Sequence[Mapping[str, Any]], context: TaskContext
) -> Mapping[str, Any]:
    """The probability the model gives the expected label, per example; and a constant."""
    probs = model.predict_proba([e["input"] for e in examples])
    expected = [model.label2id[e["expect"]] for e in examples]
    return {
        "custom": [float(p[i]) for p, i in zip(probs, expected, strict=True)],
        "accuracy": [float(p.argmax() == i) for p, i in zip(probs, expected, strict=True)],
        "examples": float(len(examples)),
    }


def not_finite(model: Any, examples: Sequence[Mapping[str, Any]], context: TaskContext) -> Any:
    """A broken task: its score is not a number."""
    return {"custom": [float("nan")] * len(examples)}
