"""The BreedingRun flow as a pure function: observations in, plan out, step by step."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.builders import Body

from studbook.api import reasons
from studbook.api.run import BreedingRun, BreedingRunStatus
from studbook.api.task import TrialResult
from studbook.breeding.admission import Decision, Refusal
from studbook.breeding.runflow import (
    RunObserved,
    RunPlan,
    TrialJob,
    reconcile,
    trial_job_name,
    trial_results,
)

T0 = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
SENTIMENT, TOPIC = "sentiment-optimize/accuracy", "topic-optimize/accuracy"
PINS = {p: "sha256:" + c * 64 for p, c in (("minilm-base", "a"), ("minilm-sentiment", "b"))}
PINS["minilm-topic"] = "sha256:" + "c" * 64
LEDGER = "file:///store/breedingruns/ns/search/uid-1/ledger.json"


def run(budget: Mapping[str, Any] | None = None, **changes: Any) -> BreedingRun:
    """The example run on whole-model coefficients: 6 trials, 3 a generation, 2 at once."""
    body = Body.of("breeding-run")
    spec = body.manifest["spec"]
    spec["searchSpace"].update(layerGranularity="model", tensorKinds=[])
    del spec["searchSpace"]["blocks"]
    spec["budget"] = {"maxTrials": 6, "population": 3, "parallelism": 2, **(budget or {})}
    for objective in spec["objectives"]:
        del objective["goal"]
    for path, value in changes.items():
        body.set(path, value)
    body.set("metadata.name", "search").set("metadata.namespace", "ns")
    body.set("metadata.uid", "uid-1").set("metadata.generation", 1)
    return body.run()


def observe(target: BreedingRun | None = None, **changes: Any) -> RunObserved:
    base: dict[str, Any] = {
        "run": target or run(),
        "now": T0,
        "ledger_uri": LEDGER,
        "decision": Decision(),
        "pins": PINS,
    }
    base.update(changes)
    return RunObserved(**base)


def after(observed: RunObserved, plan: RunPlan, **changes: Any) -> RunObserved:
    """The next observation: the plan carried out, the status written back."""
    status = plan.status
    target = observed.run.model_copy(update={"status": status})
    return dataclasses.replace(
        observed,
        run=target,
        ledger=plan.ledger or observed.ledger,
        signed=(observed.signed and plan.ledger is None) or plan.sign,
        descendants=observed.descendants | {d.metadata.name for d in plan.descendants},
        **changes,
    )


def cond(status: BreedingRunStatus, type_: str) -> tuple[str, str]:
    found = next(c for c in status.conditions if c.type == type_)
    return found.status, found.reason


def finished(
    name: str, first: int, last: int, scores: Mapping[int, float], **more: Any
) -> TrialJob:
    """A trial Job that succeeded, with a result for each trial of ``scores``."""
    results = {
        n: TrialResult(number=n, metrics={SENTIMENT: v, TOPIC: 1.6 - v}, merge_seconds=1.0)
        for n, v in scores.items()
    }
    fields: dict[str, Any] = {"phase": "Succeeded", "results": results, "gpu_seconds": 60.0}
    fields.update(more)
    return TrialJob(name, first, last, **fields)


def jobs_of(*found: TrialJob) -> dict[str, TrialJob]:
    return {j.name: j for j in found}


# --- admission ----------------------------------------------------------------------------


def test_a_missing_suite_waits_and_creates_nothing() -> None:
    plan = reconcile(
        observe(missing=((reasons.SUITE_NOT_FOUND, "suite 'x' (not found)"),), decision=None)
    )
    assert plan.status.phase == "Pending" and plan.jobs == () and plan.ledger is None
    assert cond(plan.status, reasons.PROGRESSING) == ("Unknown", reasons.SUITE_NOT_FOUND)
    assert plan.status.message == "waiting for suite 'x' (not found)"
    assert plan.requeue_after


def test_parents_not_ready_wait() -> None:
    plan = reconcile(observe(decision=Decision(waiting_for=("minilm-topic",))))
    assert plan.status.phase == "Pending" and plan.jobs == ()
    assert plan.status.message == "waiting for parents to be Ready: minilm-topic"


def test_a_refused_run_fails_naming_the_field_and_creates_nothing() -> None:
    refusal = Refusal(
        reasons.INVALID_SPEC,
        "spec.objectives[0].metric",
        "sentiment-gate/accuracy: sentiment-gate is a gate dataset of suite s",
    )
    plan = reconcile(observe(decision=Decision(refusals=(refusal,))))
    assert plan.status.phase == "Failed"
    assert "spec.objectives[0].metric" in (plan.status.message or "")
    assert cond(plan.status, reasons.COMPLETE) == ("False", reasons.INVALID_SPEC)
    assert plan.jobs == () and plan.ledger is None and plan.descendants == ()
    assert [e.type for e in plan.events] == ["Warning"]


def test_an_unusable_search_space_fails() -> None:
    target = run(**{"spec.searchSpace.layerGranularity": "layer"})
    plan = reconcile(observe(target))
    assert plan.status.phase == "Failed"
    assert "layer count" in (plan.status.message or "")


# --- the search ---------------------------------------------------------------------------


def test_the_first_look_records_proposals_before_their_job() -> None:
    plan = reconcile(observe())
    assert plan.ledger is not None and [t.state for t in plan.ledger.trials] == ["running"] * 2
    (batch,) = plan.jobs
    assert batch.name == "search-trials-0-1"
    assert [t.number for t in batch.trials] == [0, 1]
    assert batch.trials[0].merge == plan.ledger.trials[0].recipe
    status = plan.status
    assert (status.phase, status.trials_running, status.ledger_uri) == ("Running", 2, LEDGER)
    assert cond(status, reasons.PROGRESSING) == ("True", reasons.TRIALS_RUNNING)
    assert [e.reason for e in plan.events] == ["Started"]


def test_a_look_with_nothing_new_changes_nothing() -> None:
    first = observe()
    plan = reconcile(first)
    running = jobs_of(TrialJob("search-trials-0-1", 0, 1, "Running"))
    again = reconcile(after(first, plan, jobs=running))
    assert again.ledger is None and again.jobs == () and again.events == ()
    assert again.status.model_copy(update={"elapsed_until": None}) == plan.status.model_copy(
        update={"elapsed_until": None}
    )


def test_trials_recorded_but_without_a_job_get_it_under_the_same_name() -> None:
    """The operator stopped between writing the ledger and creating the Job."""
    first = observe()
    plan = reconcile(first)
    again = reconcile(after(first, plan))
    assert again.ledger is None
    assert [(b.name, [t.number for t in b.trials]) for b in again.jobs] == [
        ("search-trials-0-1", [0, 1])
    ]


def test_results_are_told_from_the_job_that_ran_them_then_more_are_asked() -> None:
    first = observe()
    plan = reconcile(first)
    done = jobs_of(finished("search-trials-0-1", 0, 1, {0: 0.8, 1: 0.6}))
    plan = reconcile(after(first, plan, jobs=done))
    assert plan.ledger is not None
    assert [t.state for t in plan.ledger.trials] == ["succeeded", "succeeded", "running", "running"]
    assert plan.ledger.trials[0].gpu_seconds == 30.0  # the Job's 60 GPU seconds, shared
    assert plan.told == ("succeeded", "succeeded")
    assert [b.name for b in plan.jobs] == ["search-trials-2-3"]
    assert plan.status.trials_done == 2 and plan.status.gpu_hours_used == pytest.approx(60 / 3600)
    assert plan.status.best is not None and plan.status.best.descendant is None


def test_a_failed_job_fails_its_unanswered_trials_with_its_reason() -> None:
    first = observe()
    plan = reconcile(first)
    crashed = finished(
        "search-trials-0-1", 0, 1, {0: 0.8}, phase="Failed", reason="exit code 137 (OOMKilled)"
    )
    plan = reconcile(after(first, plan, jobs=jobs_of(crashed)))
    assert plan.ledger is not None
    zero, one = plan.ledger.trials[:2]
    assert (zero.state, one.state) == ("succeeded", "failed")
    assert one.failure == "trial Job search-trials-0-1: exit code 137 (OOMKilled)"
    assert plan.told == ("succeeded", "failed")


@pytest.mark.parametrize(
    ("job", "failure"),
    [
        (
            finished("search-trials-0-1", 0, 1, {0: 0.8}),
            "trial Job search-trials-0-1: the Job succeeded but left no result for it",
        ),
        (
            finished("search-trials-0-1", 0, 1, {}, refused="it is a symbolic link"),
            "trial Job search-trials-0-1: its output was refused: it is a symbolic link",
        ),
    ],
)
def test_a_trial_without_a_result_fails(job: TrialJob, failure: str) -> None:
    first = observe()
    plan = reconcile(reconcile_then(first, jobs=jobs_of(job)))
    assert plan.ledger is not None and plan.ledger.trials[1].failure == failure


def reconcile_then(observed: RunObserved, **changes: Any) -> RunObserved:
    return after(observed, reconcile(observed), **changes)


def test_a_result_with_other_metrics_fails_its_trial() -> None:
    first = observe()
    odd = TrialResult(number=0, metrics={"other/accuracy": 1.0})
    job = TrialJob("search-trials-0-1", 0, 1, "Succeeded", results={0: odd})
    plan = reconcile(reconcile_then(first, jobs=jobs_of(job)))
    assert plan.ledger is not None
    assert (plan.ledger.trials[0].failure or "").startswith("its result was refused")


def test_results_already_told_are_not_told_again() -> None:
    first = observe()
    done = jobs_of(finished("search-trials-0-1", 0, 1, {0: 0.8, 1: 0.6}))
    second = reconcile_then(first, jobs=done)
    plan = reconcile(second)
    third = after(second, plan, jobs=done)
    again = reconcile(third)
    assert again.ledger is None and again.told == ()


def drive(observed: RunObserved, steps: int = 20) -> tuple[RunObserved, RunPlan]:
    """Run every Job the plans ask for to success, one look at a time, until nothing changes."""
    jobs = dict(observed.jobs)
    plan = reconcile(observed)
    for _ in range(steps):
        for batch in plan.jobs:
            numbers = [t.number for t in batch.trials]
            jobs[batch.name] = finished(
                batch.name, numbers[0], numbers[-1], {n: 0.75 + n / 100 for n in numbers}
            )
        observed = after(observed, plan, jobs=dict(jobs))
        plan = reconcile(observed)
        if plan.status.phase != "Running" and plan.ledger is None and not plan.descendants:
            break
    return observed, plan


def test_a_run_spends_its_budget_makes_the_front_descendants_and_signs() -> None:
    observed, plan = drive(observe())
    status = plan.status
    assert status.phase == "Succeeded" and status.trials_done == 6
    assert cond(status, reasons.COMPLETE) == ("True", reasons.BUDGET_SPENT)
    assert cond(status, reasons.SIGNED) == ("True", reasons.LEDGER_SIGNED)
    assert status.best is not None and status.best.descendant == f"search-t{status.best.trial}"
    assert all(p.descendant == f"search-t{p.trial}" for p in status.pareto_front)
    assert observed.descendants == {f"search-t{p.trial}" for p in status.pareto_front}
    assert [h.generation for h in status.history] == [0, 1]
    ledger = observed.ledger
    assert ledger is not None and [t.told for t in ledger.trials if t.told is not None] != []
    assert sorted(t.told or 0 for t in ledger.trials) == list(range(6))


def test_the_stopping_look_writes_the_ledger_then_signs_and_creates_descendants() -> None:
    observed = observe()
    plan = reconcile(observed)
    jobs: dict[str, TrialJob] = {}
    while plan.status.phase == "Running":
        for batch in plan.jobs:
            n = [t.number for t in batch.trials]
            jobs[batch.name] = finished(batch.name, n[0], n[-1], {k: 0.8 for k in n})
        observed = after(observed, plan, jobs=dict(jobs))
        plan = reconcile(observed)
    assert plan.ledger is not None and plan.sign
    assert plan.descendants, "the front becomes Descendants"
    child = plan.descendants[0]
    assert child.spec.origin is not None and child.spec.origin.breeding_run == "search"
    assert {p.name: p.artifact_id for p in child.spec.parents} == PINS
    assert child.metadata.labels == {"breeding.studbook.dev/run": "search"}
    events = [e.reason for e in plan.events]
    assert events[-1] == reasons.BUDGET_SPENT and "GenerationCompleted" in events


def test_a_signing_failure_is_said_and_retried() -> None:
    observed, plan = drive(observe())
    unsigned = dataclasses.replace(
        observed, signed=False, signing_error="no signing material: STUDBOOK_SIGNING_DIR is not set"
    )
    plan = reconcile(unsigned)
    assert plan.sign and plan.requeue_after
    assert cond(plan.status, reasons.SIGNED) == ("False", reasons.SIGNING_FAILED)


def test_raising_max_trials_continues_a_finished_run() -> None:
    observed, plan = drive(observe())
    assert plan.status.phase == "Succeeded"
    grown = run({"maxTrials": 9}).model_copy(update={"status": plan.status})
    grown = grown.model_copy(
        update={"metadata": grown.metadata.model_copy(update={"generation": 2})}
    )
    more = reconcile(dataclasses.replace(observed, run=grown))
    assert more.status.phase == "Running" and [b.name for b in more.jobs] == ["search-trials-6-7"]
    assert more.ledger is not None and len(more.ledger.trials) == 8
    assert [e.reason for e in more.events] == ["Started"]
    assert more.status.observed_generation == 2
    _, done = drive(dataclasses.replace(observed, run=grown))
    assert done.status.phase == "Succeeded" and done.status.trials_done == 9


def test_too_many_failures_fail_the_run_without_descendants() -> None:
    observed = observe(run({"maxFailedTrials": 0}))
    crashed = TrialJob("search-trials-0-1", 0, 1, "Failed", reason="exit code 1 (Error)")
    plan = reconcile(reconcile_then(observed, jobs=jobs_of(crashed)))
    assert plan.status.phase == "Failed" and plan.descendants == ()
    assert cond(plan.status, reasons.COMPLETE) == ("True", reasons.TOO_MANY_FAILURES)


# --- the clock ----------------------------------------------------------------------------


def test_elapsed_counts_running_time_not_time_in_a_suspended_queue() -> None:
    observed = observe(run({"maxDurationSeconds": 600}))
    plan = reconcile(observed)
    queued = TrialJob(
        "search-trials-0-1", 0, 1, "Pending", suspended="suspended until Kueue admits it"
    )
    later = after(observed, plan, jobs=jobs_of(queued), now=T0 + timedelta(seconds=30))
    plan = reconcile(later)
    # The 30 seconds before the Job was seen suspended count; from now on nothing does.
    assert plan.status.elapsed_seconds == 30.0
    assert cond(plan.status, reasons.PROGRESSING) == ("True", reasons.JOB_SUSPENDED)
    assert "waiting: search-trials-0-1 suspended until Kueue admits it" in (
        plan.status.message or ""
    )
    for minutes in (5, 60, 600):
        waited = after(later, plan, now=T0 + timedelta(minutes=minutes))
        plan = reconcile(waited)
        later = waited
        assert plan.status.elapsed_seconds == 30.0 and plan.status.phase == "Running"
    admitted = TrialJob("search-trials-0-1", 0, 1, "Running")
    resumed = after(later, plan, jobs=jobs_of(admitted), now=later.now + timedelta(seconds=1))
    plan = reconcile(resumed)
    assert plan.status.elapsed_seconds == 30.0
    ran = after(resumed, plan, now=resumed.now + timedelta(seconds=20))
    assert reconcile(ran).status.elapsed_seconds == 50.0


def test_the_duration_limit_stops_the_search() -> None:
    observed = observe(run({"maxDurationSeconds": 60}))
    plan = reconcile(observed)
    running = jobs_of(TrialJob("search-trials-0-1", 0, 1, "Running"))
    late = after(observed, plan, jobs=running, now=T0 + timedelta(seconds=61))
    plan = reconcile(late)
    assert plan.status.phase == "Succeeded"
    assert cond(plan.status, reasons.COMPLETE) == ("True", reasons.DURATION_EXCEEDED)
    assert plan.jobs == ()


# --- helpers ------------------------------------------------------------------------------


def test_trial_job_names_are_stable_and_short() -> None:
    assert trial_job_name("search", 4, 7) == "search-trials-4-7"
    long = trial_job_name("r" * 63, 1000, 1003)
    assert len(long) <= 63 and long.endswith("-trials-1000-1003")
    assert long == trial_job_name("r" * 63, 1000, 1003) != trial_job_name("r" * 62, 1000, 1003)


def test_trial_results_keep_only_the_jobs_own_trials_once_each() -> None:
    lines = [
        TrialResult(number=3, metrics={SENTIMENT: 0.5}).model_dump_json(by_alias=True),
        "not json",
        TrialResult(number=3, error="twice").model_dump_json(by_alias=True),
        TrialResult(number=9, error="not mine").model_dump_json(by_alias=True),
        "",
        TrialResult(number=4, error="refused").model_dump_json(by_alias=True),
    ]
    found = trial_results("\n".join(lines).encode(), range(3, 5))
    assert sorted(found) == [3, 4]
    assert found[3].metrics == {SENTIMENT: 0.5} and found[4].error == "refused"
