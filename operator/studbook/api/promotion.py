"""``Promotion``: one Descendant's way through shadow and canary to champion, and back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from studbook.api.base import ApiModel, Rule
from studbook.api.common import Conditions, Duration, Name
from studbook.api.resource import CrdInfo, PrinterColumn, Resource
from studbook.api.suite import bounded_map_rule


class InferenceServiceTarget(ApiModel):
    """The KServe InferenceService the descendant is released on."""

    name: Name
    """The InferenceService's name, in the Promotion's namespace."""
    model_format: Annotated[str, Field(min_length=1, max_length=63)] = "huggingface"
    """The predictor's model format."""
    runtime: Name | None = None
    """A ServingRuntime to use instead of KServe's choice."""


class CanaryStep(ApiModel):
    """One canary step: a traffic share held for a while."""

    weight: Annotated[int, Field(ge=0, le=100)]
    """Percent of traffic the descendant serves."""
    pause: Duration = "10m"
    """How long the step holds before the next one."""


class RolloutStrategy(ApiModel):
    """How traffic moves to the descendant."""

    shadow_duration: Duration | None = None
    """Time in shadow (mirrored traffic, answers discarded) before canary; empty skips shadow."""
    canary_steps: Annotated[list[CanaryStep], Field(max_length=20)] = []
    """Traffic steps, strictly increasing; the last is followed by champion (100%)."""

    rules = (
        Rule(
            cel="!has(self.canarySteps) || (self.canarySteps.map(s, s.weight).isSorted()"
            " && self.canarySteps.all(a, self.canarySteps.exists_one(b, b.weight == a.weight)))",
            message="canarySteps weights must be strictly increasing",
            check=lambda s: all(
                a.weight < b.weight
                for a, b in zip(s.canary_steps, s.canary_steps[1:], strict=False)
            ),
            field_path=".canarySteps",
        ),
    )


class Approval(ApiModel):
    """A recorded human approval."""

    by: Annotated[str, Field(min_length=1, max_length=253)]
    """Who approved."""
    at: datetime
    """When."""
    comment: Annotated[str, Field(max_length=1024)] | None = None
    """Why."""


class PromotionGateSpec(ApiModel):
    """What the descendant must show before each step."""

    require_signature: bool = True
    """The artifact and its scorecard must verify (always true under a policy that signs)."""
    require_pass_verdict: bool = True
    """The scorecard verdict must be ``pass``."""
    min_metrics: Annotated[dict[str, float], Field(max_length=32)] = {}
    """Least value of metrics, by ``<dataset>/<metric>``; within [0, 1] for accuracy, macro_f1,
    exact_match and ece."""
    approvals: Annotated[list[Approval], Field(max_length=16)] = []
    """Approvals given."""

    rules = (bounded_map_rule("minMetrics", "min_metrics"),)


class PromotionSpec(ApiModel):
    """Release one descendant."""

    descendant: Name
    """The Descendant to release."""
    target: InferenceServiceTarget
    """Where it is released."""
    strategy: RolloutStrategy = RolloutStrategy()
    """How traffic moves."""
    gates: PromotionGateSpec = PromotionGateSpec()
    """What it must show."""
    rollback_target: Name | None = None
    """The Descendant to roll back to; empty: the current champion. It must be a signed earlier
    champion."""
    rollback: bool = False
    """Set to roll back now: traffic returns to the rollback target."""


class HistoryEntry(ApiModel):
    """A step the promotion took."""

    time: datetime
    """When."""
    phase: Annotated[str, Field(max_length=32)]
    """The phase entered."""
    traffic: Annotated[int, Field(ge=0, le=100)]
    """The descendant's traffic share then."""
    message: Annotated[str, Field(max_length=1024)] = ""
    """What happened."""


class PromotionStatus(ApiModel):
    """The promotion's progress."""

    phase: Literal[
        "Pending", "Shadow", "Canary", "Promoted", "RolledBack", "Failed", "Rejected"
    ] = "Pending"
    """Where the promotion is."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """Why it stopped."""
    current_step: Annotated[int, Field(ge=0)] = 0
    """Index of the canary step in force."""
    traffic: Annotated[int, Field(ge=0, le=100)] = 0
    """Percent of traffic the descendant serves."""
    previous_champion: Name | None = None
    """The champion it replaces."""
    rollback_target: Name | None = None
    """The resolved, signed earlier champion a rollback lands on."""
    step_started_at: datetime | None = None
    """When the current step began."""
    history: Annotated[list[HistoryEntry], Field(max_length=128)] = []
    """Steps taken."""
    conditions: Conditions = []
    """Progressing, Complete and RolledBack."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""


class Promotion(Resource):
    """Moves a Descendant through shadow and canary to champion, with a recorded rollback."""

    kind: Literal["Promotion"] = "Promotion"
    """The resource kind."""
    spec: PromotionSpec
    """What to release, where and how."""
    status: PromotionStatus | None = None
    """How far it got."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        plural="promotions",
        short_names=("promo",),
        printer_columns=(
            PrinterColumn("Descendant", ".spec.descendant"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Traffic", ".status.traffic", type="integer"),
        ),
    )
