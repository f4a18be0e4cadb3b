"""Metrics over per-example outputs, each with a percentile bootstrap confidence interval.

Every metric is computed from per-example arrays, so a bootstrap resample is an index array and
all resamples are evaluated at once with numpy. One :class:`Resampler` per dataset, seeded by the
suite seed and the dataset's name, draws the same resamples for every model evaluated on that
dataset (paired comparisons), and the same ones on every run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
Statistic = Callable[[IntArray], FloatArray]
"""Maps index rows of shape ``(S, n)`` to ``S`` values; the identity row gives the estimate."""


def tidy(value: float) -> float:
    """A value rounded to 10 significant digits, so the last bits of float noise never show."""
    return float(f"{value:.10g}")


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate with its confidence interval."""

    value: float
    """The estimate on the whole dataset."""
    ci_low: float | None
    """Lower end of the interval (none without resamples)."""
    ci_high: float | None
    """Upper end of the interval."""
    n: int
    """Examples it was computed on."""


def point(statistic: Statistic, n: int) -> float:
    """The statistic on all ``n`` examples, without resampling."""
    return tidy(float(statistic(np.arange(n, dtype=np.int64)[None, :])[0]))


@dataclass(frozen=True)
class Resampler:
    """Bootstrap resamples of one dataset: ``samples`` index rows of length ``n``."""

    n: int
    """Examples in the dataset (or subset)."""
    samples: int
    """Resamples."""
    confidence: float
    """Confidence level of the intervals."""
    seed: int
    """The suite seed."""
    key: str
    """What is resampled (the dataset name); it separates the streams of different datasets."""

    def indices(self) -> IntArray:
        """The resample index rows, the same for the same seed and key."""
        rng = np.random.default_rng([self.seed, zlib.crc32(self.key.encode())])
        return rng.integers(0, self.n, size=(self.samples, self.n), dtype=np.int64)

    def estimate(self, statistic: Statistic) -> Estimate:
        """The statistic on the whole data, and its percentile interval over the resamples.

        With no resamples (``samples`` 0), the point estimate alone: a search's trials need no
        interval.
        """
        value = point(statistic, self.n)
        if self.n < 2 or self.samples == 0:
            return Estimate(tidy(value), None, None, self.n)
        stats = statistic(self.indices())
        alpha = 1.0 - self.confidence
        low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
        return Estimate(tidy(value), tidy(float(low)), tidy(float(high)), self.n)


def mean_of(scores: FloatArray) -> Statistic:
    """The mean of per-example scores (accuracy, exact match, a custom score)."""
    return lambda idx: np.asarray(scores[idx].mean(axis=1), dtype=np.float64)


def macro_f1_of(labels: IntArray, predicted: IntArray, classes: int) -> Statistic:
    """Macro F1 over the classes present among the labels or predictions of each resample."""

    def statistic(idx: IntArray) -> FloatArray:
        rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
        y = labels[idx].ravel()
        p = predicted[idx].ravel()
        size = idx.shape[0] * classes
        tp = np.bincount(rows * classes + y, weights=(y == p), minlength=size)
        true = np.bincount(rows * classes + y, minlength=size)
        pred = np.bincount(rows * classes + p, minlength=size)
        tp, true, pred = (a.reshape(idx.shape[0], classes) for a in (tp, true, pred))
        denominator = true + pred
        present = denominator > 0
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=present)
        return np.asarray(f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1), dtype=np.float64)

    return statistic


def ece_of(confidence: FloatArray, correct: FloatArray, bins: int) -> Statistic:
    """Expected calibration error with ``bins`` equal-width confidence bins."""
    bin_of = np.minimum((confidence * bins).astype(np.int64), bins - 1)

    def statistic(idx: IntArray) -> FloatArray:
        rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
        keys = rows * bins + bin_of[idx].ravel()
        size = idx.shape[0] * bins
        conf = np.bincount(keys, weights=confidence[idx].ravel(), minlength=size)
        hits = np.bincount(keys, weights=correct[idx].ravel(), minlength=size)
        gap = np.abs(conf - hits).reshape(idx.shape[0], bins).sum(axis=1)
        return np.asarray(np.clip(gap / idx.shape[1], 0.0, 1.0), dtype=np.float64)

    return statistic


def perplexity_of(nll: FloatArray, tokens: FloatArray) -> Statistic:
    """``exp`` of the token-weighted mean negative log-likelihood."""

    def statistic(idx: IntArray) -> FloatArray:
        total = np.maximum(tokens[idx].sum(axis=1), 1.0)
        return np.asarray(np.exp(nll[idx].sum(axis=1) / total), dtype=np.float64)

    return statistic
