"""The flow of one Descendant as a pure state machine: observations in, a plan out.

The operator gathers what it observes (policy, suite, parents, the Jobs of each step and the
results they left in the artifact store), calls :func:`reconcile`, creates the Jobs the plan asks
for and patches status when it changed. Nothing here remembers anything between calls: the whole
state is in the observations, so a restarted operator continues where the cluster is, and the
deterministic Job names make creating an existing Job a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from studbook.api import reasons
from studbook.api.common import ConditionStatus
from studbook.api.descendant import (
    ArtifactStatus,
    DescendantStatus,
    JobPhase,
    JobRef,
    LineageStatus,
    ResourceProfile,
    ScorecardSummary,
    Step,
)
from studbook.api.task import EXIT_REFUSED
from studbook.breeding.admission import Decision
from studbook.breeding.conditions import set_condition

STEPS: tuple[Step, ...] = ("breed", "evaluate", "sign")
STEP_CONDITION: dict[Step, str] = {
    "breed": reasons.BRED,
    "evaluate": reasons.EVALUATED,
    "sign": reasons.SIGNED,
}
STEP_PHASE = {"breed": "Breeding", "evaluate": "Evaluating", "sign": "Signing"}

BACKOFF_BASE = timedelta(seconds=10)
"""Delay before the second attempt of a failed step; it doubles with every further attempt."""


def job_name(descendant: str, step: Step, attempt: int) -> str:
    """A stable, DNS-safe name for a descendant's Job: the same inputs give the same name.

    Level-based reconciliation relies on this: creating a Job that exists already is a no-op, so
    a restarted operator never makes a duplicate.
    """
    name = f"{descendant}-{step}-{attempt}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{descendant[: 63 - len(step) - len(str(attempt)) - 11]}-{digest}-{step}-{attempt}"


@dataclass(frozen=True)
class JobObservation:
    """One Job of a step, as observed."""

    step: Step
    attempt: int
    name: str
    phase: JobPhase
    reason: str | None = None
    """Why it failed: the step's one sentence, or what Kubernetes says of its end."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    """The exit status of its container, once it failed."""
    stuck: tuple[str, str] | None = None
    """Why a Pending Job runs no pod: a reason constant and what Kubernetes says."""
    uid: str | None = None
    """Its uid, which names its output directory in the store (``outputs/<uid>``)."""

    @property
    def refused(self) -> bool:
        """Whether it failed in a way no retry can change: the step refused its inputs."""
        return self.phase == "Failed" and self.exit_code == EXIT_REFUSED


@dataclass(frozen=True)
class BreedResult:
    """What the breed step left: the sealed artifact."""

    artifact: ArtifactStatus
    lineage: LineageStatus
    profile: ResourceProfile | None = None


@dataclass(frozen=True)
class EvaluateResult:
    """What the evaluate step left: the scorecard and whether the gates passed."""

    scorecard: ScorecardSummary
    gate_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignResult:
    """What the sign step left: the signature of the artifact and of its scorecard."""

    signature_uri: str
    signer: str


@dataclass(frozen=True)
class Observed:
    """Everything the flow needs to know about one Descendant right now."""

    generation: int
    status: DescendantStatus
    now: datetime
    name: str = field(kw_only=True)
    """The Descendant's name, which its Jobs' names start with."""
    missing: tuple[tuple[str, str], ...] = ()
    """References that do not resolve yet (policy, suite, parents): reason and message."""
    decision: Decision | None = None
    """Admission, once the policy, suite and parents resolve."""
    jobs: Mapping[tuple[Step, int], JobObservation] = field(default_factory=dict)
    breed: BreedResult | None = None
    evaluate: EvaluateResult | None = None
    sign: SignResult | None = None
    max_attempts: int = 3
    """Attempts per step: one plus the descendant's ``resources.backoffLimit``."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on a transition."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What to do now."""

    status: DescendantStatus
    create: tuple[tuple[Step, int], ...] = ()
    """Jobs to create (idempotently), by step and attempt."""
    requeue_after: float | None = None
    """Look again after this many seconds even if nothing changes."""
    events: tuple[Event, ...] = ()


TERMINAL = frozenset({"Ready", "Failed", "Rejected"})


def backoff(attempt: int) -> timedelta:
    """How long to wait after attempt ``attempt`` failed."""
    return BACKOFF_BASE * int(2 ** (attempt - 1))


class _Builder:
    """Accumulates the new status and the plan's actions."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed
        self.status = observed.status
        self.create: list[tuple[Step, int]] = []
        self.events: list[Event] = []
        self.requeue: float | None = None

    def condition(self, type_: str, ok: bool | None, reason: str, message: str) -> None:
        status: ConditionStatus = "Unknown" if ok is None else ("True" if ok else "False")
        conditions = set_condition(
            list(self.status.conditions),
            type_,
            status,
            reason,
            message,
            self.observed.generation,
            self.observed.now,
        )
        self.status = self.status.model_copy(update={"conditions": conditions})

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def phase(self, phase: str, message: str, warning: bool = False) -> None:
        if self.status.phase != phase:
            kind: Literal["Normal", "Warning"] = "Warning" if warning else "Normal"
            self.events.append(Event(kind, phase, message))
        self.update(phase=phase, message=message)

    def plan(self) -> Plan:
        self.update(observed_generation=self.observed.generation)
        return Plan(self.status, tuple(self.create), self.requeue, tuple(self.events))


def _admission(b: _Builder) -> bool:
    """Whether the flow may go past admission; sets Admitted and the phase otherwise."""
    o = b.observed
    decision = o.decision
    if decision is not None and decision.refusals:
        first = decision.refusals[0]
        message = "; ".join(str(r) for r in decision.refusals)
        b.condition(reasons.ADMITTED, False, first.reason, message)
        b.condition(reasons.READY, False, first.reason, "refused at admission")
        b.phase("Rejected", message, warning=True)
        return False
    if o.missing:
        message = "; ".join(text for _, text in o.missing)
        b.condition(reasons.ADMITTED, False, o.missing[0][0], f"waiting: {message}")
        b.phase("Pending", f"waiting: {message}")
        b.requeue = 10.0
        return False
    if decision is None:
        raise ValueError("an observation without missing references must carry a decision")
    if decision.waiting_for:
        names = ", ".join(decision.waiting_for)
        b.condition(reasons.ADMITTED, None, reasons.PARENT_NOT_READY, f"waiting for {names}")
        b.phase("Pending", f"waiting for parents to be Ready: {names}")
        b.requeue = 10.0
        return False
    b.condition(reasons.ADMITTED, True, reasons.POLICY_ALLOWS, "admitted by the policy")
    return True


def _job_refs(o: Observed) -> list[JobRef]:
    return [
        JobRef(
            name=job.name,
            purpose=job.step,
            attempt=job.attempt,
            phase=job.phase,
            started_at=job.started_at,
            finished_at=job.finished_at,
            reason=job.reason[:1024] if job.reason else None,
        )
        for _, job in sorted(o.jobs.items(), key=lambda kv: (STEPS.index(kv[0][0]), kv[0][1]))
    ]


def _why(job: JobObservation) -> str:
    """Why a finished Job did not complete its step."""
    if job.phase == "Succeeded":
        what = {"breed": "model", "evaluate": "scorecard"}.get(job.step, "result")
        return f"the Job succeeded but left no {what} in its output"
    return job.reason or "the Job failed"


def _created(b: _Builder, step: Step, attempt: int) -> None:
    """The status of a step whose Job exists, or is being created, but runs no pod yet.

    It is the same whether the Job was just asked for or is already observed: seeing our own new
    Job is no transition, so it costs no status patch and no event.
    """
    previous = b.observed.jobs.get((step, attempt - 1))
    message = f"{step} attempt {attempt} created"
    if previous is not None:
        message += f" after: {_why(previous)}"
    b.condition(STEP_CONDITION[step], None, reasons.JOB_CREATED, message)
    b.phase(STEP_PHASE[step], message)


def _create(b: _Builder, step: Step, attempt: int) -> None:
    """Ask for a step's Job, and list it in status already, as the Job it will be."""
    b.create.append((step, attempt))
    name = job_name(b.observed.name, step, attempt)
    ref = JobRef(name=name, purpose=step, attempt=attempt, phase="Pending")
    b.update(jobs=[*b.status.jobs, ref])
    if step == "breed":
        b.update(attempts=attempt)
    _created(b, step, attempt)


def _step(b: _Builder, step: Step, done: bool) -> bool:
    """Drive one step; whether it is done."""
    o = b.observed
    cond = STEP_CONDITION[step]
    if done:
        return True
    attempts = sorted(a for s, a in o.jobs if s == step)
    if not attempts:
        _create(b, step, 1)
        return False
    latest = o.jobs[(step, attempts[-1])]
    if latest.phase == "Pending" and latest.stuck is not None:
        reason, why = latest.stuck
        message = f"{step} attempt {latest.attempt} cannot start: {why}"
        was = next((c for c in b.status.conditions if c.type == cond), None)
        if was is None or was.reason != reason:
            b.events.append(Event("Warning", reason, message))
        b.condition(cond, None, reason, message)
        b.phase(STEP_PHASE[step], message)
        return False
    if latest.phase == "Pending":
        _created(b, step, latest.attempt)
        return False
    if latest.phase == "Running":
        b.condition(cond, None, reasons.JOB_RUNNING, f"{step} attempt {latest.attempt} running")
        b.phase(STEP_PHASE[step], f"{step} attempt {latest.attempt} running")
        return False
    why = _why(latest)
    if latest.refused:
        b.condition(cond, False, reasons.STEP_REFUSED, why)
        b.condition(reasons.READY, False, reasons.STEP_REFUSED, f"{step} refused its inputs")
        b.phase("Failed", f"{step} failed: {why}", warning=True)
        return False
    if latest.attempt >= o.max_attempts:
        b.condition(cond, False, reasons.RETRIES_EXHAUSTED, why)
        b.condition(reasons.READY, False, reasons.JOB_FAILED, f"{step} failed")
        b.phase("Failed", f"{step} failed after {latest.attempt} attempts: {why}", warning=True)
        return False
    due = (latest.finished_at or o.now) + backoff(latest.attempt)
    if o.now >= due:
        _create(b, step, latest.attempt + 1)
    else:
        b.condition(cond, None, reasons.JOB_FAILED, f"attempt {latest.attempt} failed: {why}")
        b.phase(STEP_PHASE[step], f"{step} attempt {latest.attempt} failed: {why}")
        b.requeue = (due - o.now).total_seconds()
    return False


def reconcile(observed: Observed) -> Plan:
    """The next status of a Descendant and the Jobs to create."""
    b = _Builder(observed)
    if observed.status.phase in TERMINAL:
        return b.plan()
    if not _admission(b):
        return b.plan()
    b.update(jobs=_job_refs(observed), attempts=len([s for s, _ in observed.jobs if s == "breed"]))
    if not _step(b, "breed", observed.breed is not None):
        return b.plan()
    assert observed.breed is not None
    if b.status.artifact is None:
        b.condition(reasons.BRED, True, reasons.JOB_SUCCEEDED, "artifact sealed")
        b.events.append(Event("Normal", "Bred", f"sealed {observed.breed.artifact.id}"))
    b.update(
        artifact=observed.breed.artifact,
        lineage=observed.breed.lineage,
        resource_profile=observed.breed.profile,
    )
    if not _step(b, "evaluate", observed.evaluate is not None):
        return b.plan()
    assert observed.evaluate is not None
    gates = observed.evaluate.gate_reasons
    b.update(scorecard=observed.evaluate.scorecard)
    b.condition(
        reasons.EVALUATED,
        True,
        reasons.SCORECARD_FAILED if gates else reasons.SCORECARD_PASSED,
        "; ".join(gates) if gates else "the scorecard passes the policy's gates",
    )
    if not _step(b, "sign", observed.sign is not None):
        return b.plan()
    assert observed.sign is not None
    artifact = observed.breed.artifact.model_copy(
        update={"signature_uri": observed.sign.signature_uri, "signer": observed.sign.signer}
    )
    b.update(artifact=artifact)
    b.condition(
        reasons.SIGNED, True, reasons.SIGNATURE_VERIFIED, f"signed by {observed.sign.signer}"
    )
    if gates:
        # A negative result is kept, signed, with its lineage: evidence for later generations.
        b.update(stage="archived")
        b.condition(reasons.READY, True, reasons.ARCHIVED_NEGATIVE, "; ".join(gates))
        b.phase("Ready", "archived as a negative result: " + "; ".join(gates))
    else:
        # A stage only once Ready: a descendant that fails before that was never a candidate.
        b.update(stage="candidate")
        b.condition(reasons.READY, True, reasons.SCORECARD_PASSED, "signed, evaluated candidate")
        b.phase("Ready", f"candidate {artifact.short_id} is signed and evaluated")
    return b.plan()
