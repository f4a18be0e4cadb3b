"""Status of the resources that only need validating: BreedingPolicy and EvaluationSuite."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from studbook.api import reasons
from studbook.api.canonical import digest_of
from studbook.api.policy import BreedingPolicy, BreedingPolicyStatus
from studbook.api.suite import EvaluationSuite, EvaluationSuiteStatus
from studbook.breeding.conditions import set_condition


def _validity(body: dict[str, Any], cls: type[Any]) -> tuple[Any, str | None]:
    try:
        return cls.model_validate_json(json.dumps(body)), None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return None, problems


def policy_status(body: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The status a BreedingPolicy should have."""
    now = now or datetime.now(UTC)
    current = BreedingPolicyStatus.model_validate_json(json.dumps(body.get("status") or {}))
    policy, problems = _validity(body, BreedingPolicy)
    generation = body["metadata"].get("generation")
    ok = policy is not None
    conditions = set_condition(
        list(current.conditions),
        reasons.VALID,
        "True" if ok else "False",
        reasons.POLICY_ALLOWS if ok else reasons.INVALID_SPEC,
        "the policy is in force" if ok else f"invalid: {problems}",
        generation,
        now,
    )
    status = BreedingPolicyStatus(
        phase="Valid" if ok else "Invalid",
        message=None if ok else problems,
        conditions=conditions,
        observed_generation=generation,
    )
    return status.to_wire()


def suite_status(body: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The status an EvaluationSuite should have, with its digest."""
    now = now or datetime.now(UTC)
    current = EvaluationSuiteStatus.model_validate_json(json.dumps(body.get("status") or {}))
    suite, problems = _validity(body, EvaluationSuite)
    generation = body["metadata"].get("generation")
    ok = suite is not None
    conditions = set_condition(
        list(current.conditions),
        reasons.VALID,
        "True" if ok else "False",
        reasons.POLICY_ALLOWS
        if ok
        else reasons.SUITE_LEAKS
        if "overlap" in str(problems)
        else reasons.INVALID_SPEC,
        "the suite is valid" if ok else f"invalid: {problems}",
        generation,
        now,
    )
    status = EvaluationSuiteStatus(
        phase="Valid" if ok else "Invalid",
        digest=digest_of(suite.spec) if suite is not None else None,
        message=None if ok else problems,
        conditions=conditions,
        observed_generation=generation,
    )
    return status.to_wire()
