"""Scorecard gates, table-tested."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError
from tests.builders import Body

from studbook.api.policy import EvaluationGates, PromotionGates
from studbook.api.promotion import PromotionGateSpec
from studbook.api.scorecard import Scorecard
from studbook.breeding.gates import evaluation_gate, promotion_gate

SUBJECT = "sha256:" + "1" * 64


def scorecard(**changes: Any) -> Scorecard:
    body: dict[str, Any] = {
        "subject": SUBJECT,
        "suite": {"name": "sentiment-topic", "version": "1.0.0", "digest": "sha256:" + "2" * 64},
        "seed": 7,
        "metrics": [
            {"dataset": "sentiment-gate", "metric": "accuracy", "value": 0.86, "n": 500},
            {"dataset": "topic-gate", "metric": "accuracy", "value": 0.81, "n": 500},
            {
                "dataset": "sentiment-gate",
                "metric": "latency_ms",
                "value": 3.2,
                "n": 500,
                "direction": "minimize",
            },
        ],
        "niches": [
            {
                "probe": "sentiment",
                "parent": "minilm-sentiment",
                "metric": "accuracy",
                "parentValue": 0.88,
                "childValue": 0.86,
            },
        ],
        "calibration": [{"dataset": "sentiment-gate", "ece": 0.05}],
        "objective": {
            "metrics": ["sentiment-gate/accuracy", "topic-gate/accuracy"],
            "value": 0.835,
            "bestParent": "minilm-sentiment",
            "bestParentValue": 0.70,
            "netGain": 0.135,
        },
        "verdict": "pass",
    }
    body.update(changes)
    return Scorecard.model_validate(body)


@dataclass
class Case:
    id: str
    card: Scorecard
    gates: dict[str, Any] = field(default_factory=dict)
    words: str | None = None


CASES = [
    Case(
        "passes",
        scorecard(),
        {
            "minMetrics": {"accuracy": 0.8},
            "minNetGain": 0.0,
            "maxNicheRegression": 0.05,
            "maxCalibrationError": 0.1,
        },
    ),
    Case(
        "bare-metric-applies-to-every-dataset",
        scorecard(),
        {"minMetrics": {"accuracy": 0.82}},
        "topic-gate/accuracy = 0.81 is below the minimum 0.82",
    ),
    Case(
        "qualified-metric",
        scorecard(),
        {"minMetrics": {"sentiment-gate/accuracy": 0.9}},
        "sentiment-gate/accuracy = 0.86 is below the minimum 0.9",
    ),
    Case(
        "max-metric",
        scorecard(),
        {"maxMetrics": {"latency_ms": 2.0}},
        "sentiment-gate/latency_ms = 3.2 is above the maximum 2",
    ),
    Case(
        "metric-missing", scorecard(), {"minMetrics": {"macro_f1": 0.5}}, "macro_f1: not reported"
    ),
    Case(
        "net-gain-negative",
        scorecard(
            objective={
                "metrics": ["topic-gate/accuracy"],
                "value": 0.6,
                "bestParent": "minilm-topic",
                "bestParentValue": 0.8,
                "netGain": -0.2,
            }
        ),
        {"minNetGain": 0.0},
        "net gain -0.2 over the best parent is below the minimum +0",
    ),
    Case(
        "niche-regression",
        scorecard(
            niches=[
                {
                    "probe": "topic",
                    "parent": "minilm-topic",
                    "metric": "accuracy",
                    "parentValue": 0.9,
                    "childValue": 0.6,
                }
            ]
        ),
        {"maxNicheRegression": 0.05},
        "niche topic of parent minilm-topic: accuracy fell",
    ),
    Case(
        "calibration",
        scorecard(calibration=[{"dataset": "topic-gate", "ece": 0.3}]),
        {"maxCalibrationError": 0.15},
        "topic-gate: expected calibration error 0.3 exceeds 0.15",
    ),
    Case(
        "suite-verdict-fail",
        scorecard(verdict="fail", reasons=["sentiment-gate/accuracy below 0.9"]),
        {},
        "suite verdict fail: sentiment-gate/accuracy below 0.9",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_evaluation_gate(case: Case) -> None:
    result = evaluation_gate(case.card, EvaluationGates.model_validate(case.gates))
    if case.words is None:
        assert result.passed, result.reasons
    else:
        assert not result.passed
        assert any(case.words in r for r in result.reasons), result.reasons


def test_every_failed_gate_is_reported() -> None:
    card = scorecard(calibration=[{"dataset": "topic-gate", "ece": 0.3}])
    gates = EvaluationGates.model_validate(
        {"minMetrics": {"accuracy": 0.95}, "maxCalibrationError": 0.1}
    )
    assert len(evaluation_gate(card, gates).reasons) == 3


def test_promotion_gate_needs_signature_pass_and_tier_approvals() -> None:
    policy = Body.of("policy").policy().spec.promotion_gates
    gates = PromotionGateSpec.model_validate({"minMetrics": {"topic-gate/accuracy": 0.8}})
    assert promotion_gate(scorecard(), gates, policy, "low", signed=True).passed
    refused = promotion_gate(scorecard(verdict="inconclusive"), gates, policy, "high", signed=False)
    assert set(refused.reasons) == {
        "the artifact or its scorecard does not verify",
        "scorecard verdict is inconclusive, not pass",
        "risk tier high needs 2 approvals, 0 given",
    }
    assert not promotion_gate(scorecard(), gates, PromotionGates(), "medium", signed=False).passed


def test_scorecard_refuses_duplicate_metric() -> None:
    metric = {"dataset": "topic-gate", "metric": "accuracy", "value": 0.8, "n": 10}
    with pytest.raises(ValueError, match="may appear once"):
        scorecard(metrics=[metric, metric])


@pytest.mark.parametrize(
    ("gates", "words"),
    [
        ({"minMetrics": {"accuracy": 1.5}}, "minMetrics: bounds of accuracy"),
        ({"minMetrics": {"sentiment-gate/macro_f1": -0.1}}, "must lie in [0, 1]"),
        ({"maxMetrics": {"ece": -0.01}}, "maxMetrics: bounds of accuracy"),
        (
            {"minMetrics": {"accuracy": 0.9}, "maxMetrics": {"accuracy": 0.8}},
            "minMetrics must not exceed its maxMetrics",
        ),
        ({"maxNicheRegression": -0.05}, "greater than or equal to 0"),
        ({"maxCalibrationError": 1.5}, "less than or equal to 1"),
    ],
)
def test_gates_no_model_can_pass_are_refused(gates: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        EvaluationGates.model_validate(gates)


def test_unbounded_metrics_keep_any_bound() -> None:
    gates = EvaluationGates.model_validate(
        {"minMetrics": {"custom": 7.0}, "maxMetrics": {"perplexity": 40.0, "latency_ms": 250.0}}
    )
    assert gates.max_metrics["perplexity"] == 40.0
    assert "sentiment-gate/latency_ms" not in " ".join(evaluation_gate(scorecard(), gates).reasons)


def test_promotion_min_metric_over_one_is_refused() -> None:
    with pytest.raises(ValidationError, match=re.escape("must lie in [0, 1]")):
        PromotionGateSpec.model_validate({"minMetrics": {"sentiment-gate/accuracy": 1.01}})
