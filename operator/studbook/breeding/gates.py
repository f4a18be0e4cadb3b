"""Gates: whether a scorecard admits a candidate or moves a promotion on.

Pure functions over a :class:`~studbook.api.scorecard.Scorecard`; every refusal comes with its
reason, and all reasons are reported, not only the first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from studbook.api.policy import EvaluationGates, PromotionGates
from studbook.api.promotion import PromotionGateSpec
from studbook.api.scorecard import MetricResult, Scorecard


@dataclass(frozen=True)
class GateResult:
    """The outcome of a gate."""

    reasons: tuple[str, ...] = ()
    """Why the gate is closed; empty when it is open."""

    @property
    def passed(self) -> bool:
        """Whether the gate is open."""
        return not self.reasons


def _matching(scorecard: Scorecard, name: str) -> list[MetricResult]:
    """``dataset/metric`` names one result; a bare metric name names it on every dataset."""
    if "/" in name:
        found = scorecard.metric(name)
        return [found] if found else []
    return [m for m in scorecard.metrics if m.metric == name]


def _bounds(scorecard: Scorecard, bounds: Mapping[str, float], lowest: bool) -> Iterator[str]:
    for name, bound in sorted(bounds.items()):
        results = _matching(scorecard, name)
        if not results:
            yield f"{name}: not reported by the scorecard"
        for result in results:
            if lowest and result.value < bound:
                yield f"{result.key} = {result.value:.4g} is below the minimum {bound:g}"
            if not lowest and result.value > bound:
                yield f"{result.key} = {result.value:.4g} is above the maximum {bound:g}"


def evaluation_gate(scorecard: Scorecard, gates: EvaluationGates) -> GateResult:
    """Whether a scorecard passes a policy's evaluation gates."""
    reasons = [f"suite verdict {scorecard.verdict}: {r}" for r in scorecard.reasons]
    if scorecard.verdict != "pass" and not reasons:
        reasons.append(f"suite verdict is {scorecard.verdict}")
    reasons += _bounds(scorecard, gates.min_metrics, lowest=True)
    reasons += _bounds(scorecard, gates.max_metrics, lowest=False)
    if gates.min_net_gain is not None:
        gain = scorecard.objective.net_gain if scorecard.objective else None
        if gain is None:
            reasons.append("net gain: not reported (no parent to compare with)")
        elif gain < gates.min_net_gain:
            reasons.append(
                f"net gain {gain:+.4g} over the best parent is below the minimum"
                f" {gates.min_net_gain:+g}"
            )
    if gates.max_niche_regression is not None:
        for niche in scorecard.niches:
            if niche.regression > gates.max_niche_regression:
                reasons.append(
                    f"niche {niche.probe} of parent {niche.parent}: {niche.metric} fell from"
                    f" {niche.parent_value:.4g} to {niche.child_value:.4g}, more than the"
                    f" allowed {gates.max_niche_regression:g}"
                )
    if gates.max_calibration_error is not None:
        for calibration in scorecard.calibration:
            if calibration.ece > gates.max_calibration_error:
                reasons.append(
                    f"{calibration.dataset}: expected calibration error {calibration.ece:.4g}"
                    f" exceeds {gates.max_calibration_error:g}"
                )
    return GateResult(tuple(reasons))


def promotion_gate(
    scorecard: Scorecard,
    gates: PromotionGateSpec,
    policy: PromotionGates,
    risk_tier: str,
    signed: bool,
) -> GateResult:
    """Whether a promotion may take its next step."""
    reasons = []
    if gates.require_signature and not signed:
        reasons.append("the artifact or its scorecard does not verify")
    if (gates.require_pass_verdict or policy.require_pass_verdict) and scorecard.verdict != "pass":
        reasons.append(f"scorecard verdict is {scorecard.verdict}, not pass")
    reasons += _bounds(scorecard, gates.min_metrics, lowest=True)
    tier = next((t for t in policy.tiers if t.tier == risk_tier), None)
    if tier is not None and len(gates.approvals) < tier.required_approvals:
        reasons.append(
            f"risk tier {risk_tier} needs {tier.required_approvals} approvals,"
            f" {len(gates.approvals)} given"
        )
    return GateResult(tuple(reasons))
