"""Status of policies and suites: valid, or invalid with the problems and a reason."""

from __future__ import annotations

from tests.builders import Body

from studbook.controllers.resources import policy_status, suite_status


def _body(name: str) -> dict[str, object]:
    return Body.of(name).set("metadata.generation", 3).manifest


def test_valid_suite_gets_its_digest_and_keeps_its_transition_time() -> None:
    body = _body("suite")
    first = suite_status(body)
    assert first["phase"] == "Valid" and first["digest"].startswith("sha256:")
    assert first["observedGeneration"] == 3
    again = suite_status({**body, "status": first})
    assert again == first, "an unchanged suite keeps its status"


def test_leaking_suite_is_invalid_with_its_own_reason() -> None:
    body = _body("suite")
    datasets = body["spec"]["datasets"]  # type: ignore[index]
    datasets[3]["digest"] = datasets[1]["digest"]
    status = suite_status(body)
    assert status["phase"] == "Invalid" and "digest" not in status
    (valid,) = status["conditions"]
    assert (valid["status"], valid["reason"]) == ("False", "SuiteLeaks")
    assert "must not overlap" in status["message"]


def test_invalid_policy_names_the_field() -> None:
    status = policy_status(Body.of("policy").set("spec.allowedOperators", ["clone"]).manifest)
    assert status["phase"] == "Invalid"
    assert "spec.allowedOperators.0" in status["message"]
    assert status["conditions"][0]["reason"] == "InvalidSpec"
