"""Conditions as the Kubernetes API conventions keep them: a list-map keyed by ``type``."""

from __future__ import annotations

from datetime import datetime

from studbook.api.common import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """The conditions with one set; ``lastTransitionTime`` moves only when the status changes."""
    current = next((c for c in conditions if c.type == type_), None)
    since = current.last_transition_time if current and current.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:4096],
        last_transition_time=since,
        observed_generation=generation,
    )
    if current == updated:
        return conditions
    others = [c for c in conditions if c.type != type_]
    return sorted([*others, updated], key=lambda c: c.type)


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of a type, if set."""
    return next((c for c in conditions if c.type == type_), None)
