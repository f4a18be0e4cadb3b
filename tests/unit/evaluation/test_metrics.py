"""Metrics and bootstrap intervals on hand-checked arrays (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from studbook_trainer.evaluation.metrics import (
    Resampler,
    ece_of,
    macro_f1_of,
    mean_of,
    perplexity_of,
    point,
)


def test_macro_f1_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1 -> 0.8; class 2: tp 1, fn 1 -> 2/3
    expected = (0.5 + 0.8 + 2 / 3) / 3
    assert point(macro_f1_of(labels, predicted, 4), 6) == pytest.approx(expected)


def test_ece_by_hand() -> None:
    confidence = np.array([0.95, 0.95, 0.65, 0.65])
    correct = np.array([1.0, 1.0, 0.0, 1.0])
    # bin 9: |1.9 - 2| = 0.1; bin 6: |1.3 - 1| = 0.3; over 4 examples
    assert point(ece_of(confidence, correct, 10), 4) == pytest.approx(0.1)


def test_perplexity_is_token_weighted() -> None:
    nll = np.array([2.0, 6.0])
    tokens = np.array([1.0, 3.0])
    assert point(perplexity_of(nll, tokens), 2) == pytest.approx(np.exp(2.0))


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    scores = (np.arange(200) % 3 == 0).astype(np.float64)
    a = Resampler(200, 500, 0.95, seed=1, key="d").estimate(mean_of(scores))
    b = Resampler(200, 500, 0.95, seed=1, key="d").estimate(mean_of(scores))
    c = Resampler(200, 500, 0.95, seed=2, key="d").estimate(mean_of(scores))
    assert a == b and a.ci_low != c.ci_low
    assert a.ci_low is not None and a.ci_high is not None
    assert a.ci_low < a.value < a.ci_high
    assert a.value == pytest.approx(67 / 200)
    narrow = Resampler(200, 500, 0.5, seed=1, key="d").estimate(mean_of(scores))
    assert narrow.ci_low > a.ci_low and narrow.ci_high < a.ci_high  # type: ignore[operator]
