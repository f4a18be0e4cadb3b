"""The flow of one BreedingRun as a pure function: observations in, a plan out.

The operator gathers what it observes (the run, its admission, the ledger in the store, the
trial Jobs and the results each left in its own output, the Descendants the run made, the
clock), calls :func:`reconcile`, and carries out the plan in this order: write the ledger,
create the trial Jobs, create the Descendants, sign the ledger, patch status. Nothing is
remembered between calls: the search is rebuilt from the ledger each time
(:meth:`~studbook.breeding.search.Search.replay`), so a restarted operator goes on where the
store and the cluster are.

Why this order is safe:

* proposals are recorded in the ledger before the Job that runs them is created, so no Job ever
  runs trials the ledger does not know; a trial that is ``running`` in the ledger with no Job
  covering it (the operator stopped in between) gets its Job on the next look, under the same
  deterministic name (:func:`trial_job_name`), so creating it twice is a no-op;
* results are told only for trials still ``running`` in the ledger, and only from the output of
  the Job that was given them, so no trial is told twice and no Job is made again for a trial
  that has a result;
* a trial Job that failed, or succeeded without a result for some of its trials, fails those
  trials with the Job's reason: they are not retried, so no recipe is evaluated twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from pydantic import ValidationError

from studbook.api import reasons
from studbook.api.common import ConditionStatus
from studbook.api.descendant import Descendant, JobPhase
from studbook.api.ledger import Ledger, TrialRecord
from studbook.api.run import BreedingRun, BreedingRunStatus, TrialPoint
from studbook.api.task import TrialResult, TrialSpec
from studbook.breeding.admission import Decision
from studbook.breeding.conditions import condition, set_condition
from studbook.breeding.flow import Event
from studbook.breeding.runs import descendant_name, descendant_of
from studbook.breeding.search import (
    Failure,
    LedgerMismatch,
    Scores,
    Search,
    SearchSpecError,
)

WAIT_SECONDS: Final = 10.0
"""Look again this soon while a reference is missing or a parent is not Ready."""
SIGN_RETRY_SECONDS: Final = 60.0
"""Look again this soon after signing the ledger failed."""


def trial_job_name(run: str, first: int, last: int) -> str:
    """The name of the Job that runs a run's trials ``first`` to ``last``, kept to 63 characters.

    The same trials give the same name, so creating their Job twice is a no-op.
    """
    suffix = f"-trials-{first}-{last}"
    if len(run) + len(suffix) <= 63:
        return run + suffix
    digest = hashlib.sha256(run.encode()).hexdigest()[:8]
    return f"{run[: 63 - len(suffix) - 9].rstrip('-')}-{digest}{suffix}"


def trial_results(raw: bytes, numbers: range) -> dict[int, TrialResult]:
    """The results in a trial Job's ``trials.jsonl`` for the trials it was given.

    The file is untrusted: a line that is not a result, or names a trial the Job was not given,
    is skipped; a trial answered twice keeps its first answer.
    """
    out: dict[int, TrialResult] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            result = TrialResult.model_validate_json(line)
        except ValidationError:
            continue
        if result.number in numbers and result.number not in out:
            out[result.number] = result
    return out


@dataclass(frozen=True)
class TrialJob:
    """One trial Job of the run, as observed."""

    name: str
    first: int
    """The first trial it was given."""
    last: int
    """The last trial it was given; it runs ``first`` to ``last``."""
    phase: JobPhase
    suspended: str | None = None
    """Why it runs no pod: it waits suspended (for a queue), in words."""
    reason: str | None = None
    """Why it failed, once it did."""
    results: Mapping[int, TrialResult] | None = None
    """What its output holds for its trials, once it finished (read only while some of its
    trials are still running in the ledger)."""
    refused: str | None = None
    """Why its output was refused (a link, an oversized file), if it was."""
    seconds: float = 0.0
    """Wall-clock seconds its pod ran."""
    gpu_seconds: float = 0.0
    """GPU seconds it spent: its GPUs times its pod's runtime."""

    @property
    def numbers(self) -> range:
        """The trials it was given."""
        return range(self.first, self.last + 1)

    @property
    def finished(self) -> bool:
        """Whether it ended, either way."""
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class RunObserved:
    """Everything the flow needs to know about one BreedingRun right now."""

    run: BreedingRun
    now: datetime
    ledger_uri: str
    """Where the run's ledger lives (or will)."""
    missing: tuple[tuple[str, str], ...] = ()
    """References that do not resolve (policy, suite, parents): reason and message."""
    decision: Decision | None = None
    """Admission (``breeding.runs.admit_run``), once the policy and suite resolve."""
    ledger: Ledger | None = None
    """The ledger from the store; ``None`` before the first proposal."""
    ledger_error: str | None = None
    """Why the ledger in the store could not be read."""
    num_layers: int | None = None
    """The parents' layer count, for block and layer coefficients of a new search."""
    jobs: Mapping[str, TrialJob] = field(default_factory=dict)
    """The run's trial Jobs, by name."""
    descendants: frozenset[str] = frozenset()
    """Names of the Descendants the run made that exist."""
    pins: Mapping[str, str] = field(default_factory=dict)
    """The artifact ids of the parents the trials are scored against, by parent name."""
    signed: bool = False
    """Whether the ledger as it is in the store is signed."""
    signing_error: str | None = None
    """Why signing the ledger failed just now, if it did."""


@dataclass(frozen=True)
class TrialBatch:
    """A trial Job to create: its name and its trials, whose numbers are consecutive."""

    name: str
    trials: tuple[TrialSpec, ...]


@dataclass(frozen=True)
class RunPlan:
    """What to do now, in this order."""

    status: BreedingRunStatus
    ledger: Ledger | None = None
    """The ledger to write before anything else; ``None`` when it did not change."""
    jobs: tuple[TrialBatch, ...] = ()
    """Trial Jobs to create (idempotently), once the ledger is written."""
    descendants: tuple[Descendant, ...] = ()
    """Descendants of the best and the front to create (idempotently)."""
    sign: bool = False
    """Sign the ledger (written first, if it changed)."""
    told: tuple[str, ...] = ()
    """The outcome of each trial told now (``succeeded``, ``failed``), for metrics."""
    requeue_after: float | None = None
    """Look again after this many seconds even if nothing changes."""
    events: tuple[Event, ...] = ()


class _Builder:
    """Accumulates the new status and the plan's actions."""

    def __init__(self, observed: RunObserved) -> None:
        self.observed = observed
        self.previous = observed.run.status or BreedingRunStatus()
        self.status = self.previous
        self.generation = observed.run.metadata.generation or 1
        self.events: list[Event] = []
        self.requeue: float | None = None

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def condition(self, type_: str, ok: bool | None, reason: str, message: str) -> None:
        value: ConditionStatus = "Unknown" if ok is None else ("True" if ok else "False")
        conditions = set_condition(
            list(self.status.conditions),
            type_,
            value,
            reason,
            message,
            self.generation,
            self.observed.now,
        )
        self.update(conditions=conditions)

    def phase(self, phase: str, message: str, reason: str, warning: bool = False) -> None:
        if self.previous.phase != phase:
            kind: Literal["Normal", "Warning"] = "Warning" if warning else "Normal"
            self.events.append(Event(kind, reason, message))
        self.update(phase=phase, message=message)

    def plan(
        self,
        ledger: Ledger | None = None,
        jobs: tuple[TrialBatch, ...] = (),
        descendants: tuple[Descendant, ...] = (),
        sign: bool = False,
        told: tuple[str, ...] = (),
    ) -> RunPlan:
        self.update(observed_generation=self.generation)
        return RunPlan(
            self.status,
            ledger,
            jobs,
            descendants,
            sign,
            told,
            self.requeue,
            tuple(self.events),
        )


def _fail(b: _Builder, reason: str, message: str) -> RunPlan:
    """A run that cannot go on as specified: Failed, nothing created."""
    b.condition(reasons.PROGRESSING, False, reason, message)
    b.condition(reasons.COMPLETE, False, reason, message)
    b.update(elapsed_until=None)
    b.phase("Failed", message, reason, warning=True)
    return b.plan()


def _admitted(b: _Builder) -> RunPlan | None:
    """The plan of a run that may not start (yet); ``None`` once it may."""
    o = b.observed
    decision = o.decision
    if decision is not None and decision.refusals:
        return _fail(b, decision.refusals[0].reason, "; ".join(str(r) for r in decision.refusals))
    waiting = [text for _, text in o.missing]
    if decision is None and not waiting:
        raise ValueError("an observation without missing references must carry a decision")
    if decision is not None and decision.waiting_for:
        waiting.append("parents to be Ready: " + ", ".join(decision.waiting_for))
    if not waiting:
        return None
    reason = o.missing[0][0] if o.missing else reasons.PARENT_NOT_READY
    message = "waiting for " + "; ".join(waiting)
    b.condition(reasons.PROGRESSING, None, reason, message)
    b.update(elapsed_until=None)
    # A run that started keeps its phase while it waits, for example for a policy put back.
    b.phase("Pending" if b.previous.phase == "Pending" else b.previous.phase, message, reason)
    b.requeue = WAIT_SECONDS
    return b.plan()


def _scores(job: TrialJob, result: TrialResult | None, share: float) -> Scores | Failure:
    """What to tell of one trial of a finished Job."""
    seconds = result.merge_seconds + result.score_seconds if result else 0.0
    if result is None:
        if job.refused is not None:
            why = f"its output was refused: {job.refused}"
        elif job.phase == "Failed":
            why = job.reason or "the Job failed"
        else:
            why = "the Job succeeded but left no result for it"
        return Failure(f"trial Job {job.name}: {why}", seconds, share)
    if result.error is not None:
        return Failure(result.error, seconds, share)
    return Scores(dict(result.metrics or {}), seconds, share)


def _tell(search: Search, jobs: Sequence[TrialJob]) -> list[str]:
    """Tell the results of every finished Job's trials that are still running."""
    running = {t.number for t in search.ledger().trials if t.state == "running"}
    told: list[str] = []
    for job in sorted(jobs, key=lambda j: j.first):
        mine = [n for n in job.numbers if n in running]
        if not job.finished or not mine:
            continue
        results = job.results or {}
        share = job.gpu_seconds / len(job.numbers)
        for number in mine:
            outcome = _scores(job, results.get(number), share)
            try:
                search.tell(number, outcome)
            except ValueError as error:  # metrics other than the objectives
                outcome = Failure(f"its result was refused: {error}", 0.0, share)
                search.tell(number, outcome)
            told.append("succeeded" if isinstance(outcome, Scores) else "failed")
    return told


def _uncovered(search: Search, jobs: Mapping[str, TrialJob], asked: set[int]) -> list[list[int]]:
    """Runs of consecutive trials that are running in the ledger with no Job to run them."""
    covered = {n for job in jobs.values() for n in job.numbers} | asked
    loose = [t.number for t in search.ledger().trials if t.state == "running"]
    groups: list[list[int]] = []
    for number in (n for n in loose if n not in covered):
        if groups and groups[-1][-1] == number - 1:
            groups[-1].append(number)
        else:
            groups.append([number])
    return groups


def _batch(run: str, records: Sequence[TrialRecord]) -> TrialBatch:
    trials = tuple(
        TrialSpec(number=r.number, merge=r.recipe, parents=list(r.parents)) for r in records
    )
    return TrialBatch(trial_job_name(run, records[0].number, records[-1].number), trials)


def _elapsed(b: _Builder) -> float:
    """Seconds counted against the wall-clock budget so far.

    The time since the last look counts if the run was going on then and not waiting on a queue.
    """
    previous = b.previous
    since = previous.elapsed_until
    elapsed = previous.elapsed_seconds
    progressing = condition(list(previous.conditions), reasons.PROGRESSING)
    queued = progressing is not None and progressing.reason == reasons.JOB_SUSPENDED
    if previous.phase == "Running" and since is not None and not queued:
        elapsed += max(0.0, (b.observed.now - since).total_seconds())
    return elapsed


def _with_descendants(points: list[TrialPoint], names: set[str], run: str) -> list[TrialPoint]:
    out = []
    for point in points:
        name = descendant_name(run, point.trial)
        out.append(point.model_copy(update={"descendant": name if name in names else None}))
    return out


def reconcile(observed: RunObserved) -> RunPlan:
    """The next status of a BreedingRun, the ledger to write and what to create."""
    b = _Builder(observed)
    run = observed.run
    name = run.metadata.name
    waiting = _admitted(b)
    if waiting is not None:
        return waiting
    if observed.ledger_error is not None:
        return _fail(b, reasons.INVALID_SPEC, f"the ledger is unreadable: {observed.ledger_error}")
    try:
        if observed.ledger is None:
            search = Search(run.spec, observed.num_layers)
        else:
            search = Search.replay(run.spec, observed.ledger)
    except (SearchSpecError, LedgerMismatch) as error:
        return _fail(b, reasons.INVALID_SPEC, str(error))
    before = search.ledger()
    told = _tell(search, list(observed.jobs.values()))
    elapsed = _elapsed(b)
    decision = search.decide(elapsed)
    batches: list[TrialBatch] = []
    if not decision.stop:
        asked = search.ask(run.spec.budget.parallelism)
        records = search.ledger().trials
        for group in _uncovered(search, observed.jobs, {c.number for c in asked}):
            batches.append(_batch(name, [records[n] for n in group]))
        if asked:
            batches.append(_batch(name, [records[c.number] for c in asked]))
    ledger = search.ledger()
    changed = observed.ledger is None or ledger != before
    front = search.front()
    best = search.best()
    descendants: list[Descendant] = []
    existing = set(observed.descendants)
    if decision.stop and not decision.failed:
        for point in front:
            child = descendant_name(name, point.trial)
            if child not in existing:
                record = ledger.trials[point.trial]
                descendants.append(descendant_of(run, record, observed.pins))
                existing.add(child)
    history = search.history()
    done_before = max((h.generation for h in b.previous.history), default=-1)
    for summary in history:
        if summary.generation > done_before:
            best_of = (
                "none feasible"
                if summary.best_fitness is None
                else f"best fitness {summary.best_fitness:.4g}"
            )
            b.events.append(
                Event(
                    "Normal",
                    "GenerationCompleted",
                    f"generation {summary.generation}: {summary.trials} scored,"
                    f" {summary.failed} failed, {best_of}, front of {summary.front_size}",
                )
            )
    b.update(
        generation=search.generation,
        trials_done=search.trials_done,
        trials_failed=search.trials_failed,
        trials_running=search.trials_running,
        gpu_hours_used=search.gpu_hours_used,
        elapsed_seconds=elapsed,
        best=_with_descendants([best], existing, name)[0] if best else None,
        pareto_front=_with_descendants(front, existing, name),
        history=history,
        ledger_uri=observed.ledger_uri,
    )
    if decision.stop:
        assert decision.reason is not None
        reason = str(decision.reason)
        b.update(elapsed_until=None)
        b.condition(reasons.PROGRESSING, False, reason, decision.message)
        b.condition(reasons.COMPLETE, True, reason, decision.message)
        sign = not observed.signed or changed
        if sign and observed.signing_error is not None:
            b.condition(reasons.SIGNED, False, reasons.SIGNING_FAILED, observed.signing_error)
            b.requeue = SIGN_RETRY_SECONDS
        elif sign:
            b.condition(reasons.SIGNED, None, reasons.LEDGER_UNSIGNED, "the ledger is being signed")
        else:
            b.condition(reasons.SIGNED, True, reasons.LEDGER_SIGNED, "the ledger is signed")
        phase = "Failed" if decision.failed else "Succeeded"
        b.phase(phase, decision.message, reason, warning=decision.failed)
        return b.plan(
            ledger=ledger if changed else None,
            descendants=tuple(descendants),
            sign=sign,
            told=tuple(told),
        )
    b.update(elapsed_until=observed.now)
    b.update(conditions=[c for c in b.status.conditions if c.type != reasons.SIGNED])
    outstanding = [j for j in observed.jobs.values() if not j.finished]
    queued = [j for j in outstanding if j.suspended is not None]
    budget = run.spec.budget
    counts = (
        f"generation {search.generation}: {search.trials_done} done, {search.trials_failed}"
        f" failed, {search.trials_running} running of {budget.max_trials} trials"
    )
    if outstanding and len(queued) == len(outstanding) and not batches:
        why = "; ".join(f"{j.name} {j.suspended}" for j in sorted(queued, key=lambda j: j.first))
        message = f"{counts}; waiting: {why}"
        b.condition(reasons.PROGRESSING, True, reasons.JOB_SUSPENDED, message)
    else:
        message = counts
        b.condition(reasons.PROGRESSING, True, reasons.TRIALS_RUNNING, message)
    b.condition(reasons.COMPLETE, False, reasons.TRIALS_RUNNING, "the search goes on")
    if b.previous.phase != "Running":
        started = "started" if observed.ledger is None else "continues"
        b.events.append(Event("Normal", "Started", f"the search {started}: {counts}"))
    b.update(phase="Running", message=message)
    return b.plan(
        ledger=ledger if changed else None,
        jobs=tuple(batches),
        told=tuple(told),
    )
