"""The Descendant flow as a state machine: observations in, plan out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from studbook.api import reasons
from studbook.api.descendant import (
    ArtifactStatus,
    DescendantStatus,
    LineageStatus,
    ScorecardSummary,
)
from studbook.api.task import EXIT_FAILED, EXIT_REFUSED
from studbook.breeding.admission import Decision, Refusal
from studbook.breeding.flow import (
    BreedResult,
    EvaluateResult,
    JobObservation,
    Observed,
    Plan,
    SignResult,
    reconcile,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ID = "sha256:" + "ab" * 32
BREED = BreedResult(
    ArtifactStatus(
        id=ID, short_id="abababababab", uri="file:///store/" + ID[7:], size_bytes=90_000
    ),
    LineageStatus(
        operator="lora", config_hash="sha256:" + "cd" * 32, code_version="0.1.0", created_at=T0
    ),
)
CARD = ScorecardSummary(
    suite="sentiment-topic",
    suite_version="1.0.0",
    suite_digest="sha256:" + "ef" * 32,
    verdict="pass",
    net_gain=0.12,
)
SIGNED = SignResult(signature_uri="file:///store/sig.json", signer="studbook-signer")


def observe(status: DescendantStatus | None = None, **changes: Any) -> Observed:
    base: dict[str, Any] = {
        "name": "d",
        "generation": 1,
        "status": status or DescendantStatus(),
        "now": T0,
        "decision": Decision(),
    }
    base.update(changes)
    return Observed(**base)


def job(step: Any, attempt: int, phase: Any, **more: Any) -> dict[tuple[Any, int], JobObservation]:
    return {(step, attempt): JobObservation(step, attempt, f"d-{step}-{attempt}", phase, **more)}


def cond(plan: Plan, type_: str) -> tuple[str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason


def test_missing_reference_waits_without_jobs() -> None:
    plan = reconcile(
        observe(missing=((reasons.SUITE_NOT_FOUND, "suite 'x' not found"),), decision=None)
    )
    assert plan.create == () and plan.status.phase == "Pending"
    assert cond(plan, reasons.ADMITTED) == ("False", reasons.SUITE_NOT_FOUND)
    assert plan.requeue_after


def test_refusal_is_terminal_and_creates_nothing() -> None:
    refused = Decision(
        refusals=(
            Refusal(
                reasons.BUDGET_EXCEEDED,
                "spec.operator.lora.rank",
                "LoRA rank 512 exceeds the budget of 64",
            ),
        )
    )
    plan = reconcile(observe(decision=refused))
    assert plan.create == () and plan.status.phase == "Rejected"
    assert "LoRA rank 512" in (plan.status.message or "")
    assert cond(plan, reasons.ADMITTED) == ("False", reasons.BUDGET_EXCEEDED)
    again = reconcile(observe(plan.status, decision=Decision()))
    assert again.create == () and again.status == plan.status, "terminal stays terminal"


def test_waits_for_parents_that_are_not_ready() -> None:
    plan = reconcile(observe(decision=Decision(waiting_for=("minilm-base",))))
    assert plan.create == () and "minilm-base" in (plan.status.message or "")


def test_admitted_descendant_starts_its_breed_job_once() -> None:
    first = reconcile(observe())
    assert first.create == (("breed", 1),)
    assert first.status.phase == "Breeding"
    # Restarted before the Job showed up in the cache: the same name is asked for again.
    assert reconcile(observe(first.status)).create == (("breed", 1),)
    running = reconcile(observe(first.status, jobs=job("breed", 1, "Running")))
    assert running.create == () and running.events == ()
    assert cond(running, reasons.BRED) == ("Unknown", reasons.JOB_RUNNING)


def test_a_job_is_listed_as_it_is_asked_for_so_seeing_it_queued_changes_nothing() -> None:
    first = reconcile(observe())
    assert [(j.name, j.purpose, j.attempt, j.phase) for j in first.status.jobs] == [
        ("d-breed-1", "breed", 1, "Pending")
    ]
    assert first.status.attempts == 1
    assert cond(first, reasons.BRED) == ("Unknown", reasons.JOB_CREATED)
    queued = reconcile(observe(first.status, jobs=job("breed", 1, "Pending")))
    assert queued.status == first.status and queued.events == () and queued.create == ()
    # The same for a retry: its status as asked for is its status as seen queued.
    failed = job("breed", 1, "Failed", reason="OOMKilled", finished_at=T0)
    later = T0 + timedelta(seconds=10)
    retry = reconcile(observe(jobs=failed, now=later))
    assert retry.create == (("breed", 2),) and retry.status.attempts == 2
    assert "attempt 2 created after: OOMKilled" in (retry.status.message or "")
    seen = reconcile(
        observe(retry.status, jobs={**failed, **job("breed", 2, "Pending")}, now=later)
    )
    assert seen.status == retry.status and seen.events == ()


def test_failed_attempt_is_retried_after_backoff_then_fails() -> None:
    failed = job("breed", 1, "Failed", reason="OOMKilled", finished_at=T0)
    early = reconcile(observe(jobs=failed, now=T0 + timedelta(seconds=3)))
    assert early.create == () and early.requeue_after == 7.0
    due = reconcile(observe(jobs=failed, now=T0 + timedelta(seconds=10)))
    assert due.create == (("breed", 2),)
    jobs = {**failed, **job("breed", 2, "Failed", reason="OOMKilled", finished_at=T0)}
    last = reconcile(observe(jobs=jobs, max_attempts=2, now=T0 + timedelta(minutes=5)))
    assert last.create == () and last.status.phase == "Failed"
    assert "breed failed after 2 attempts: OOMKilled" in (last.status.message or "")
    assert cond(last, reasons.BRED) == ("False", reasons.RETRIES_EXHAUSTED)
    assert [j.attempt for j in last.status.jobs] == [1, 2]


def test_success_without_result_counts_as_failure() -> None:
    plan = reconcile(observe(jobs=job("breed", 1, "Succeeded", finished_at=T0), max_attempts=1))
    assert plan.status.phase == "Failed"
    assert "left no model in its output" in (plan.status.message or "")


def test_full_flow_ends_ready_and_signed() -> None:
    jobs = {
        **job("breed", 1, "Succeeded"),
        **job("evaluate", 1, "Succeeded"),
        **job("sign", 1, "Succeeded"),
    }
    evaluating = reconcile(observe(jobs=job("breed", 1, "Succeeded"), breed=BREED))
    # No stage until Ready: the sealed artifact is not yet a candidate.
    assert evaluating.create == (("evaluate", 1),) and evaluating.status.stage is None
    assert evaluating.status.artifact and evaluating.status.artifact.id == ID
    plan = reconcile(
        observe(
            evaluating.status, jobs=jobs, breed=BREED, evaluate=EvaluateResult(CARD), sign=SIGNED
        )
    )
    assert plan.status.phase == "Ready" and plan.status.stage == "candidate"
    assert plan.status.artifact and plan.status.artifact.signer == "studbook-signer"
    for type_ in (reasons.ADMITTED, reasons.BRED, reasons.EVALUATED, reasons.SIGNED, reasons.READY):
        assert cond(plan, type_)[0] == "True", type_
    assert [e.reason for e in plan.events] == ["Ready"]


def test_negative_result_is_archived_not_deleted() -> None:
    jobs = {
        **job("breed", 1, "Succeeded"),
        **job("evaluate", 1, "Succeeded"),
        **job("sign", 1, "Succeeded"),
    }
    plan = reconcile(
        observe(
            jobs=jobs,
            breed=BREED,
            sign=SIGNED,
            evaluate=EvaluateResult(CARD, ("net gain -0.1 below +0",)),
        )
    )
    assert plan.status.phase == "Ready" and plan.status.stage == "archived"
    assert cond(plan, reasons.READY) == ("True", reasons.ARCHIVED_NEGATIVE)
    assert cond(plan, reasons.EVALUATED) == ("True", reasons.SCORECARD_FAILED)


def test_unchanged_observation_gives_unchanged_status() -> None:
    first = reconcile(observe(jobs=job("breed", 1, "Running")))
    again = reconcile(
        observe(first.status, jobs=job("breed", 1, "Running"), now=T0 + timedelta(minutes=1))
    )
    assert again.status == first.status, "no status patch when nothing changed"


def test_refusal_wins_over_missing_references() -> None:
    refused = Decision(
        refusals=(Refusal(reasons.OPERATOR_FORBIDDEN, "spec.operator.kind", "not allowed"),),
        missing=("minilm-topic",),
    )
    plan = reconcile(
        observe(
            missing=((reasons.PARENT_NOT_FOUND, "parent 'minilm-topic' not found"),),
            decision=refused,
        )
    )
    assert plan.status.phase == "Rejected" and plan.create == ()


def test_a_refused_step_fails_at_once_with_its_reason() -> None:
    why = "dataset 'train' (data/train.jsonl) hashes to sha256:aa, the task pins sha256:bb"
    refused = job("breed", 1, "Failed", reason=why, exit_code=EXIT_REFUSED, finished_at=T0)
    plan = reconcile(observe(jobs=refused, now=T0 + timedelta(minutes=5)))
    assert plan.create == () and plan.requeue_after is None
    assert plan.status.phase == "Failed"
    assert plan.status.message == f"breed failed: {why}"
    assert cond(plan, reasons.BRED) == ("False", reasons.STEP_REFUSED)
    assert cond(plan, reasons.READY) == ("False", reasons.STEP_REFUSED)
    assert [(j.attempt, j.reason) for j in plan.status.jobs] == [(1, why)]
    assert [e.type for e in plan.events] == ["Warning"]


@pytest.mark.parametrize(
    ("exit_code", "phase", "create"),
    [
        (EXIT_REFUSED, "Failed", ()),
        (EXIT_FAILED, "Breeding", (("breed", 2),)),
        (137, "Breeding", (("breed", 2),)),
        (None, "Breeding", (("breed", 2),)),
    ],
)
def test_only_a_refusal_is_not_retried(
    exit_code: int | None, phase: str, create: tuple[tuple[str, int], ...]
) -> None:
    failed = job("breed", 1, "Failed", reason="why", exit_code=exit_code, finished_at=T0)
    plan = reconcile(observe(jobs=failed, now=T0 + timedelta(minutes=5)))
    assert plan.status.phase == phase and plan.create == create


def test_a_refused_evaluation_fails_the_descendant_with_the_artifact_kept() -> None:
    why = "dataset topic-gate (t.jsonl) hashes to sha256:aa, the suite pins sha256:bb"
    jobs = {
        **job("breed", 1, "Succeeded", finished_at=T0),
        **job("evaluate", 1, "Failed", reason=why, exit_code=EXIT_REFUSED, finished_at=T0),
    }
    plan = reconcile(observe(jobs=jobs, breed=BREED, now=T0 + timedelta(minutes=5)))
    assert plan.create == () and plan.status.phase == "Failed"
    assert plan.status.message == f"evaluate failed: {why}"
    assert plan.status.artifact == BREED.artifact
    # It never became a candidate: `kubectl get desc` shows no stage for it.
    assert plan.status.stage is None


def test_a_failed_attempt_says_why_while_its_retry_waits() -> None:
    failed = job("breed", 1, "Failed", reason="CUDA out of memory", finished_at=T0)
    waiting = reconcile(observe(jobs=failed, now=T0 + timedelta(seconds=3)))
    assert waiting.create == () and waiting.status.phase == "Breeding"
    assert waiting.status.message == "breed attempt 1 failed: CUDA out of memory"
    assert waiting.status.jobs[0].reason == "CUDA out of memory"


def test_a_job_that_cannot_start_says_why_and_warns_once() -> None:
    first = reconcile(observe())
    why = (reasons.UNSCHEDULABLE, "0/3 nodes are available: 3 node(s) didn't match selector.")
    stuck = reconcile(observe(first.status, jobs=job("breed", 1, "Pending", stuck=why)))
    assert stuck.create == () and stuck.status.phase == "Breeding"
    assert stuck.status.message == f"breed attempt 1 cannot start: {why[1]}"
    assert cond(stuck, reasons.BRED) == ("Unknown", reasons.UNSCHEDULABLE)
    assert [(e.type, e.reason) for e in stuck.events] == [("Warning", reasons.UNSCHEDULABLE)]
    # Still stuck the same way: no second event.
    again = reconcile(observe(stuck.status, jobs=job("breed", 1, "Pending", stuck=why)))
    assert again.events == () and again.status.message == stuck.status.message
    # Once it runs, the reason goes.
    running = reconcile(observe(again.status, jobs=job("breed", 1, "Running")))
    assert cond(running, reasons.BRED) == ("Unknown", reasons.JOB_RUNNING)
