"""Status of the resources that only need validating: BreedingPolicy and EvaluationSuite."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from studbook.api import reasons
from studbook.api.canonical import digest_of
from studbook.api.common import Condition
from studbook.api.policy import BreedingPolicy, BreedingPolicyStatus
from studbook.api.resource import Resource
from studbook.api.suite import EvaluationSuite, EvaluationSuiteStatus
from studbook.breeding.conditions import set_condition


def _validate(
    body: dict[str, Any], cls: type[Resource], valid_reason: str, valid_message: str
) -> tuple[Resource | None, str | None, list[Condition]]:
    """The parsed resource (or the problems) and the Valid condition that says so."""
    current = body.get("status") or {}
    conditions = [
        Condition.model_validate_json(json.dumps(c)) for c in current.get("conditions") or []
    ]
    try:
        resource: Resource | None = cls.model_validate_json(json.dumps(body))
        problems = None
    except ValidationError as error:
        resource = None
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    leaks = problems is not None and "must not overlap" in problems
    conditions = set_condition(
        conditions,
        reasons.VALID,
        "True" if resource else "False",
        valid_reason if resource else reasons.SUITE_LEAKS if leaks else reasons.INVALID_SPEC,
        valid_message if resource else f"invalid: {problems}",
        body["metadata"].get("generation"),
        datetime.now(UTC),
    )
    return resource, problems, conditions


def policy_status(body: dict[str, Any]) -> dict[str, Any]:
    """The status a BreedingPolicy should have."""
    policy, problems, conditions = _validate(
        body, BreedingPolicy, reasons.POLICY_ALLOWS, "the policy is in force"
    )
    return BreedingPolicyStatus(
        phase="Valid" if policy else "Invalid",
        message=problems,
        conditions=conditions,
        observed_generation=body["metadata"].get("generation"),
    ).to_wire()


def suite_status(body: dict[str, Any]) -> dict[str, Any]:
    """The status an EvaluationSuite should have, with its digest."""
    suite, problems, conditions = _validate(
        body, EvaluationSuite, reasons.POLICY_ALLOWS, "the suite is valid"
    )
    return EvaluationSuiteStatus(
        phase="Valid" if suite else "Invalid",
        digest=digest_of(suite.spec) if isinstance(suite, EvaluationSuite) else None,
        message=problems,
        conditions=conditions,
        observed_generation=body["metadata"].get("generation"),
    ).to_wire()
