"""The evaluation tasks: what a model outputs on a dataset, and the metrics read from it.

Built in: ``classification`` (class probabilities: accuracy, macro F1, expected calibration
error, abstention) and ``causal-lm`` (token log-likelihoods: perplexity; greedy generation:
exact match). A suite dataset with ``task: custom`` names a user-defined task as
``customTask: module:function``; the function is called as::

    def my_task(model, examples, context) -> Mapping[str, float | Sequence[float]]

* ``model`` is a :class:`~studbook_trainer.evaluation.models.Classifier` or a
  :class:`~studbook_trainer.evaluation.models.LanguageModel` (the subject, a parent, the
  baseline, the ensemble or the champion; use only the protocol's methods);
* ``examples`` are the dataset's records (JSON objects, in file order);
* ``context`` is a :class:`TaskContext` (dataset name, seed, batch size);
* the result maps metric names (``custom``, or any built-in name) to either one score per
  example (the metric is their mean, with a bootstrap interval) or a single number (no
  interval). Every value must be finite. Run deterministically for a given seed.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from studbook.api.suite import SuiteDataset
from studbook_trainer.evaluation.data import Dataset, Record, class_index, texts
from studbook_trainer.evaluation.errors import CustomTaskError, DatasetFormatError
from studbook_trainer.evaluation.metrics import (
    Estimate,
    FloatArray,
    IntArray,
    Resampler,
    ece_of,
    macro_f1_of,
    mean_of,
    perplexity_of,
)
from studbook_trainer.evaluation.models import (
    Classifier,
    LanguageModel,
    greedy_generate,
    score_sequences,
)

TASK_METRICS: Mapping[str, frozenset[str]] = {
    "classification": frozenset({"accuracy", "macro_f1", "ece"}),
    "causal-lm": frozenset({"perplexity", "exact_match"}),
}
"""The metrics :func:`estimate` reads from the outputs of each built-in task (``exact_match``
only from prompt/target examples); a custom task names its own."""


@dataclass(frozen=True)
class TaskContext:
    """What a user-defined task is told besides the model and the examples."""

    dataset: str
    """The dataset's name in the suite."""
    seed: int
    """The suite seed: seed any sampling with it."""
    batch_size: int
    """The batch size the harness uses."""


CustomTask = Callable[[Any, Sequence[Record], TaskContext], Mapping[str, Any]]
"""The signature of a user-defined task."""


@dataclass(frozen=True)
class ClassificationOutputs:
    """Class probabilities of a model on a classification dataset."""

    probs: FloatArray
    """Shape ``(n, classes)``."""
    labels: IntArray
    """True class index per example."""

    @property
    def predicted(self) -> IntArray:
        """The predicted class per example (lowest index on ties)."""
        return np.asarray(self.probs.argmax(axis=1), dtype=np.int64)

    @property
    def confidence(self) -> FloatArray:
        """The probability of the predicted class."""
        return np.asarray(self.probs.max(axis=1), dtype=np.float64)

    @property
    def correct(self) -> FloatArray:
        """1.0 where the prediction is right."""
        return np.asarray(self.predicted == self.labels, dtype=np.float64)


@dataclass(frozen=True)
class LanguageModelOutputs:
    """Token log-likelihoods and generations of a model on a causal-lm dataset."""

    nll: FloatArray
    """Summed negative log-likelihood of each example's scored tokens."""
    tokens: FloatArray
    """Scored tokens per example."""
    exact: FloatArray
    """1.0 where greedy generation matched the target, for prompt/target examples only."""


@dataclass(frozen=True)
class CustomOutputs:
    """What a user-defined task returned: per-example scores or single numbers, by metric."""

    scores: Mapping[str, FloatArray | float]
    """By metric name."""


Outputs = ClassificationOutputs | LanguageModelOutputs | CustomOutputs


@dataclass(frozen=True)
class Run:
    """A model's outputs on one dataset and the wall time they took."""

    outputs: Outputs
    """The outputs."""
    seconds: float
    """Wall time of the model's forward passes and decoding."""


def load_custom_task(reference: str) -> CustomTask:
    """Import ``module:function``."""
    module_name, _, function = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, function)
    except (ImportError, AttributeError) as exc:
        raise CustomTaskError(f"cannot import custom task {reference}: {exc}") from exc
    if not callable(found):
        raise CustomTaskError(f"custom task {reference} is not callable")
    task: CustomTask = found
    return task


def run_classification(model: Classifier, dataset: Dataset) -> Run:
    """Class probabilities of ``model`` on ``dataset``."""
    labels = np.asarray(
        [class_index(r, model.label2id, model.num_labels) for r in dataset.records], dtype=np.int64
    )
    first, pairs = texts(dataset.records)
    start = time.perf_counter()
    probs = model.predict_proba(first, pairs)
    seconds = time.perf_counter() - start
    if probs.shape != (len(first), model.num_labels):
        raise DatasetFormatError(f"{dataset.name}: the model returned probabilities {probs.shape}")
    return Run(ClassificationOutputs(probs, labels), seconds)


def _lm_inputs(tokenizer: Any, record: Record) -> tuple[list[int], int, int]:
    """Token ids, the first scored position, and the target's token count (0: text only)."""
    if "text" in record:
        ids = list(tokenizer(record["text"])["input_ids"])
        return ids, 1, 0
    prompt = list(tokenizer(record["prompt"])["input_ids"])
    full = list(tokenizer(record["prompt"] + record["target"])["input_ids"])
    if full[: len(prompt)] != prompt or len(full) == len(prompt):
        full = prompt + list(tokenizer(record["target"], add_special_tokens=False)["input_ids"])
    return full, len(prompt), len(full) - len(prompt)


def run_language_model(model: LanguageModel, dataset: Dataset, batch_size: int) -> Run:
    """Perplexity inputs of ``model`` on ``dataset`` and, for prompt/target records, exact match."""
    tokenizer = model.tokenizer
    inputs = [_lm_inputs(tokenizer, r) for r in dataset.records]
    start = time.perf_counter()
    nll, tokens = score_sequences(
        model, [i[0] for i in inputs], [i[1] for i in inputs], batch_size=batch_size
    )
    pairs = [k for k, i in enumerate(inputs) if i[2] > 0]
    generated = greedy_generate(
        model,
        [inputs[k][0][: inputs[k][1]] for k in pairs],
        [inputs[k][2] for k in pairs],
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - start
    exact = np.asarray(
        [
            tokenizer.decode(g, skip_special_tokens=True).strip()
            == str(dataset.records[k]["target"]).strip()
            for k, g in zip(pairs, generated, strict=True)
        ],
        dtype=np.float64,
    )
    return Run(LanguageModelOutputs(nll, tokens, exact), seconds)


def run_custom(model: Any, dataset: Dataset, context: TaskContext) -> Run:
    """Call the dataset's user-defined task and check what it returns."""
    reference = dataset.spec.custom_task
    if reference is None:  # pragma: no cover - the API model requires it for task custom
        raise CustomTaskError(f"{dataset.name}: no customTask")
    task = load_custom_task(reference)
    start = time.perf_counter()
    result = task(model, dataset.records, context)
    seconds = time.perf_counter() - start
    if not isinstance(result, Mapping):
        raise CustomTaskError(f"{reference} returned {type(result).__name__}, not a mapping")
    scores: dict[str, FloatArray | float] = {}
    for name, value in result.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if not math.isfinite(number):
                raise CustomTaskError(f"{reference}: metric {name} is not finite")
            scores[str(name)] = number
            continue
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CustomTaskError(f"{reference}: metric {name} is not numeric") from exc
        if array.ndim != 1 or not array.size or not np.isfinite(array).all():
            raise CustomTaskError(f"{reference}: metric {name} must be finite scores per example")
        scores[str(name)] = array
    return Run(CustomOutputs(scores), seconds)


def estimate(
    metric: str,
    outputs: Outputs,
    spec: SuiteDataset,
    *,
    samples: int,
    confidence: float,
    seed: int,
    bins: int,
) -> Estimate | None:
    """A metric of one model's outputs on one dataset; ``None`` where it does not apply.

    ``latency_ms`` and ``size_bytes`` are properties of the run, not of the outputs; the harness
    reports them.
    """

    def resampler(n: int, key: str) -> Resampler:
        return Resampler(n, samples, confidence, seed, key)

    if isinstance(outputs, ClassificationOutputs):
        n = len(outputs.labels)
        r = resampler(n, spec.name)
        if metric == "accuracy":
            return r.estimate(mean_of(outputs.correct))
        if metric == "macro_f1":
            classes = outputs.probs.shape[1]
            return r.estimate(macro_f1_of(outputs.labels, outputs.predicted, classes))
        if metric == "ece":
            return r.estimate(ece_of(outputs.confidence, outputs.correct, bins))
        return None
    if isinstance(outputs, LanguageModelOutputs):
        if metric == "perplexity":
            r = resampler(len(outputs.nll), spec.name)
            return r.estimate(perplexity_of(outputs.nll, outputs.tokens))
        if metric == "exact_match" and len(outputs.exact):
            r = resampler(len(outputs.exact), spec.name + "/exact_match")
            return r.estimate(mean_of(outputs.exact))
        return None
    value = outputs.scores.get(metric)
    if value is None:
        return None
    if isinstance(value, float):
        return Estimate(value, None, None, 0)
    return resampler(len(value), f"{spec.name}/{metric}").estimate(mean_of(value))
