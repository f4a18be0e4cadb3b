"""Reconcile one Descendant: observe the cluster and the store, plan, act.

The decisions live in :mod:`studbook.breeding` (admission, the flow, gates); this module only
reads what they need and carries out their plan: Jobs created idempotently, status patched when
it changed, events posted on transitions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from studbook import metrics
from studbook.api import reasons
from studbook.api.descendant import Descendant, DescendantSpec, DescendantStatus, Step
from studbook.api.policy import BreedingPolicy
from studbook.api.task import (
    EXIT_FAILED,
    EXIT_REFUSED,
    BreedResultFile,
    BreedTask,
    EvaluateTask,
    ParentArtifact,
    SignResultFile,
    record_uri,
)
from studbook.artifacts import Signer, Store, Verifier
from studbook.artifacts.errors import ArtifactError, SigningError
from studbook.artifacts.policy import trust_policy
from studbook.artifacts.results import read_result
from studbook.breeding.admission import Decision, ParentFacts, admit, job_deadline
from studbook.breeding.flow import (
    TERMINAL,
    Event,
    JobObservation,
    Observed,
    Plan,
    job_name,
    reconcile,
)
from studbook.breeding.tasks import breed_task, evaluate_task, sign_task
from studbook.controllers.settings import OperatorSettings
from studbook.controllers.view import View, forget, typed
from studbook.k8s import jobs as builders
from studbook.k8s.client import apply as client_apply
from studbook.k8s.client import config_map_value, create, create_if_absent, patch_status
from studbook.local.steps import (
    parent_facts,
    run_sign,
    seal_output,
    signer_from_dir,
    step_results,
)

log = logging.getLogger("studbook.descendants")

EventSink = Callable[[dict[str, Any], Event], None]
TRUST_CONFIG_KEY = "trust_config.json"
"""The key of a keyless signer's ConfigMap that holds the sigstore ClientTrustConfig."""
STUCK_AFTER = 10.0
"""Seconds a Job may run no pod before the operator asks its pods why."""
STEP_NAMES: dict[str, Step] = {"breed": "breed", "evaluate": "evaluate"}
"""The steps that run as Jobs; the operator signs in its own process."""


@dataclass
class Controller:
    """What reconciling needs across calls: the API client, settings, and caches by id."""

    api: client.ApiClient
    settings: OperatorSettings
    post_event: EventSink
    _locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    _verifiers: dict[tuple[str, int], Verifier] = field(default_factory=dict)
    _counted: set[str] = field(default_factory=set)
    _written: dict[str, str] = field(default_factory=dict)
    _fenced: set[str] = field(default_factory=set)
    _signings: dict[str, dict[int, JobObservation]] = field(default_factory=dict)
    """Sign attempts run in this process, by Descendant uid and attempt."""
    _looked_at: dict[str, float] = field(default_factory=dict)

    def echoes(self, body: dict[str, Any]) -> bool:
        """Whether a body is exactly what our own last status patch made of it.

        An event bringing it needs no reconcile: nothing changed since we decided.
        """
        meta = body["metadata"]
        written = self._written.get(f"{meta['namespace']}/{meta['name']}")
        return written is not None and written == meta.get("resourceVersion")

    def counted(self, body: dict[str, Any]) -> bool:
        """Whether a Descendant is :func:`finished`; if so, it is counted in the population.

        Counting is all that reconciling it would do.
        """
        if not finished(body):
            return False
        status = body["status"]
        metrics.POPULATION.observe(
            str(body["metadata"].get("uid")), status["phase"], status.get("stage")
        )
        return True

    def reconcile(self, body: dict[str, Any], view: View) -> Plan | None:
        """Bring one Descendant a step further; returns the plan carried out."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        started = time.perf_counter()
        # Events and timers of one object may overlap; one reconciliation at a time each.
        with self._locks[key]:
            self._looked_at[key] = time.monotonic()
            try:
                plan = self._reconcile(body, view)
            except Exception:
                metrics.RECONCILES.labels("Descendant", "error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.labels("Descendant").observe(
                    time.perf_counter() - started
                )
        metrics.RECONCILES.labels("Descendant", "ok").inc()
        return plan

    def done(self, body: dict[str, Any]) -> bool:
        """Whether a Descendant is in a terminal phase: the sweeper passes it by."""
        return (body.get("status") or {}).get("phase") in TERMINAL

    def sweep_due(self, namespace: str, name: str, interval: float) -> bool:
        """Whether a sweep should look at a Descendant: one was looked at, but not lately.

        One never looked at is still on its way through the event handlers (kopf hands every
        listed object to them); sweeping it meanwhile would race them, from an older body, and
        repeat their status patch and event. One looked at within ``interval``, for example by
        an event, waits for the next sweep.
        """
        last = self._looked_at.get(f"{namespace}/{name}")
        return last is not None and time.monotonic() - last >= interval

    # -- observing ------------------------------------------------------------------------

    def _reconcile(self, body: dict[str, Any], view: View) -> Plan | None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        current_status = body.get("status") or {}
        if self.counted(body):
            # The flow would return this status as it is. Parsing it would cost more than all
            # the rest, for each one an operator start lists.
            return None
        try:
            descendant = typed(Descendant, body)
        except ValidationError as error:
            status = DescendantStatus(phase="Rejected", message=f"invalid spec: {error}"[:4096])
            self._patch_if_changed(namespace, name, current_status, status)
            return None
        status = descendant.status or DescendantStatus()
        observed = self._observe(descendant, status, view)
        plan = reconcile(observed)
        if self._act(descendant, observed, plan, view):
            # Signing ran here, not in a Job: its outcome is known now, so plan again with it.
            observed = self._observe(descendant, status, view)
            plan = reconcile(observed)
            self._act(descendant, observed, plan, view)
        # Metrics first: whoever sees the new status can already scrape it.
        metrics.POPULATION.observe(
            str(descendant.metadata.uid), plan.status.phase, plan.status.stage
        )
        if plan.status.phase == "Rejected" and status.phase != "Rejected":
            for refusal in observed.decision.refusals if observed.decision else ():
                metrics.ADMISSIONS_REFUSED.labels(refusal.reason).inc()
        self._patch_if_changed(namespace, name, current_status, plan.status)
        for event in plan.events:
            self.post_event(body, event)
        if plan.status.phase in TERMINAL:
            forget(str(descendant.metadata.uid))
            self._signings.pop(str(descendant.metadata.uid), None)
        return plan

    def _observe(self, descendant: Descendant, status: DescendantStatus, view: View) -> Observed:
        spec = descendant.spec
        namespace = descendant.metadata.namespace or "default"
        now = datetime.now(UTC)
        generation = descendant.metadata.generation or 1
        name = descendant.metadata.name
        base = Observed(generation=generation, status=status, now=now, name=name)
        if status.phase in ("Ready", "Failed", "Rejected"):
            return base
        policy = view.policy(namespace, spec.policy_ref.name)
        suite = view.suite(namespace, spec.evaluation_suite_ref.name)
        missing = []
        if policy is None:
            missing.append((reasons.POLICY_NOT_FOUND, f"policy {spec.policy_ref.name!r} not found"))
        if suite is None:
            missing.append(
                (reasons.SUITE_NOT_FOUND, f"suite {spec.evaluation_suite_ref.name!r} not found")
            )
        if policy is None:
            return Observed(generation, status, now, name=name, missing=tuple(missing))
        decision = self.admission(namespace, spec, policy, view)
        missing += [
            (reasons.PARENT_NOT_FOUND, f"parent {parent!r} not found")
            for parent in decision.missing
        ]
        if missing or decision.refusals:
            return Observed(
                generation, status, now, name=name, missing=tuple(missing), decision=decision
            )
        bodies = view.jobs_of(namespace, name)
        jobs = self._jobs(namespace, bodies)
        for attempt, signing in self._signings.get(str(descendant.metadata.uid), {}).items():
            jobs[("sign", attempt)] = signing

        def seal(job: JobObservation, output: str) -> BreedResultFile:
            return self._seal(namespace, job, output)

        results = step_results(
            self.settings.store,
            self._records(descendant),
            jobs,
            policy.spec.evaluation_gates,
            seal,
        )
        return Observed(
            name=name,
            generation=generation,
            status=status,
            now=now,
            decision=decision,
            jobs=results.jobs,
            breed=results.breed,
            evaluate=results.evaluate,
            sign=results.sign,
            max_attempts=1 + spec.resources.backoff_limit,
        )

    def _records(self, descendant: Descendant) -> Callable[[Step, int], str]:
        """Where this operator records a descendant's steps in the store."""
        namespace = descendant.metadata.namespace or "default"
        name, uid = descendant.metadata.name, str(descendant.metadata.uid)
        return lambda step, attempt: record_uri(
            self.settings.store, namespace, name, uid, step, attempt
        )

    def _seal(self, namespace: str, job: JobObservation, output: str) -> BreedResultFile:
        """Seal a succeeded breed Job's model here, as the operator, with its task's lineage.

        The task and the image are read from the Job's pod template, which the operator wrote
        and which cannot change: the lineage names what the Job was told to run, not what its
        pod says it did. The index keeps no templates, so the Job is read once, here; one of
        the same name but another uid (deleted and made again) is not the one that succeeded.
        """
        read = client.BatchV1Api(self.api).read_namespaced_job(job.name, namespace)
        found: dict[str, Any] = self.api.sanitize_for_serialization(read)  # type: ignore[no-untyped-call]
        if found["metadata"]["uid"] != job.uid:
            raise FileNotFoundError(f"Job {job.name} was replaced before it was sealed")
        template = found["spec"]["template"]
        task = BreedTask.model_validate_json(
            template["metadata"]["annotations"][builders.ANNOTATION_TASK]
        )
        image = template["spec"]["containers"][0]["image"]
        sealed = seal_output(Store.open(self.settings.store), task, output, image)
        log.info("sealed %s from Job %s", sealed.artifact.id, job.name)
        return sealed

    def _verifier(self, namespace: str, policy: BreedingPolicy) -> Verifier:
        key = (str(policy.metadata.uid), policy.metadata.generation or 0)
        if key not in self._verifiers:
            configs, signers = {}, []
            for signer in policy.spec.trusted_signers:
                if signer.keyless is not None:
                    name = signer.keyless.trust_config_map
                    value = config_map_value(self.api, namespace, name, TRUST_CONFIG_KEY)
                    if value is None:
                        # A signer whose trust cannot be established verifies nothing.
                        log.warning(
                            "signer %s: no %s in ConfigMap %s", signer.name, TRUST_CONFIG_KEY, name
                        )
                        continue
                    configs[name] = value.encode()
                signers.append(signer)
            trust = trust_policy(signers, configs)
            self._verifiers[key] = Verifier(Store.open(self.settings.store), trust)
        return self._verifiers[key]

    def admission(
        self,
        namespace: str,
        spec: DescendantSpec,
        policy: BreedingPolicy,
        view: View,
        verify: bool = True,
    ) -> Decision:
        """Admission of a spec under its policy, with its parents as the view shows them.

        Without ``verify``, a Ready parent counts as intact and signed: verifying re-hashes its
        whole artifact, which only reconciling can afford.
        """
        parents = {
            ref.name: self.parent(namespace, policy, view.descendant(namespace, ref.name), verify)
            for ref in spec.parents
        }
        return admit(spec, policy.spec, parents)

    def parent(
        self, namespace: str, policy: BreedingPolicy, parent: Descendant | None, verify: bool
    ) -> ParentFacts | None:
        """What admission needs to know of a parent (``None``: not found), verified if asked."""
        if parent is None:
            return None
        where = f"{namespace}/{parent.metadata.name}"

        def refused(error: ArtifactError) -> None:
            metrics.VERIFICATION_FAILURES.labels(type(error).__name__).inc()
            log.warning("parent %s refused: %s", where, error)

        check = self._verifier(namespace, policy).verify if verify else _trusted
        return parent_facts(parent, parent.status or DescendantStatus(), check, refused)

    def _jobs(
        self, namespace: str, bodies: list[dict[str, Any]]
    ) -> dict[tuple[Step, int], JobObservation]:
        out: dict[tuple[Step, int], JobObservation] = {}
        for job in bodies:
            labels = job["metadata"].get("labels") or {}
            step = STEP_NAMES.get(labels.get(builders.LABEL_PURPOSE, ""))
            if step is None:
                continue
            attempt = int(labels.get(builders.LABEL_ATTEMPT, "1"))
            out[(step, attempt)] = self._job_observation(namespace, step, attempt, job)
        return out

    def _job_observation(
        self, namespace: str, step: Step, attempt: int, job: dict[str, Any]
    ) -> JobObservation:
        st = job.get("status") or {}
        conditions = {c["type"]: c for c in st.get("conditions") or [] if c["status"] == "True"}
        phase = builders.job_phase(job)
        reason = exit_code = None
        name = job["metadata"]["name"]
        if phase == "Failed":
            exit_code, reason = self.failure(namespace, job)
        stuck = self._stuck(namespace, job) if phase == "Pending" else None
        # A queued Job has a startTime too; its ref says when it ran, so it stays as created.
        started = None if phase == "Pending" else timestamp(st.get("startTime"))
        finished = timestamp(st.get("completionTime")) or timestamp(
            conditions.get("Failed", {}).get("lastTransitionTime")
        )
        if phase in ("Succeeded", "Failed"):
            self._finished(namespace, step, job, phase == "Failed", started, finished)
        return JobObservation(
            step=step,
            attempt=attempt,
            name=name,
            phase=phase,
            reason=reason,
            started_at=started,
            finished_at=finished,
            exit_code=exit_code,
            stuck=stuck,
            uid=job["metadata"].get("uid"),
        )

    def failure(self, namespace: str, job: dict[str, Any]) -> tuple[int | None, str]:
        """Why a failed Job failed: its container's exit code, if one is known, and a sentence."""
        st = job.get("status") or {}
        failed = next(
            (c for c in st.get("conditions") or [] if c["type"] == "Failed"), {"reason": "Failed"}
        )
        if failed.get("reason") == "DeadlineExceeded":
            # Its pod was killed for it: the pod's last words would hide why.
            deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
            return None, f"DeadlineExceeded: the Job ran past its deadline of {deadline}s"
        terminated = self._termination(namespace, job["metadata"]["name"])
        if terminated is not None:
            return terminated
        return None, f"{failed.get('reason')}: {failed.get('message')}"

    def _stuck(self, namespace: str, job: dict[str, Any]) -> tuple[str, str] | None:
        """Why a Job that runs no pod yet is not getting one, if Kubernetes says so.

        Its pods are looked at only once it has waited :data:`STUCK_AFTER`: most Jobs get a
        running pod sooner, and listing pods for each would cost a request every reconcile.
        """
        found = builders.suspended(job)
        created = timestamp(job["metadata"].get("creationTimestamp"))
        if found is not None or created is None:
            return found
        if (datetime.now(UTC) - created).total_seconds() < STUCK_AFTER:
            return None
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=f"job-name={job['metadata']['name']}"
        )
        for pod in pods.items:
            found = builders.pod_stuck(self.api.sanitize_for_serialization(pod))  # type: ignore[no-untyped-call]
            if found is not None:
                return found
        return None

    def _finished(
        self,
        namespace: str,
        step: Step,
        job: dict[str, Any],
        failed: bool,
        started: datetime | None,
        finished: datetime | None,
    ) -> None:
        """Count a finished Job (its failure, its GPU hours) once per process."""
        uid = str(job["metadata"].get("uid"))
        if uid in self._counted:
            return
        self._counted.add(uid)
        if failed:
            metrics.JOB_FAILURES.labels(step).inc()
        if started is None:
            return
        seconds = ((finished or datetime.now(UTC)) - started).total_seconds()
        metrics.GPU_HOURS.labels(namespace).inc(gpus(job) * seconds / 3600)

    def _termination(self, namespace: str, job_name: str) -> tuple[int, str] | None:
        """The exit code of a failed Job's container, and why it failed."""
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=f"job-name={job_name}"
        )
        for pod in pods.items:
            for container in (pod.status.container_statuses if pod.status else None) or []:
                done = container.state.terminated if container.state else None
                if done is not None and done.exit_code:
                    return done.exit_code, termination_reason(
                        done.exit_code, done.reason, done.message
                    )
        return None

    # -- acting ---------------------------------------------------------------------------

    def fence_once(self, namespace: str) -> None:
        """Apply the namespace's step NetworkPolicy unless this process did already."""
        if namespace not in self._fenced:
            self.fence(namespace)

    def fence(self, namespace: str) -> None:
        """Apply the namespace's step NetworkPolicy as it should be.

        Before the namespace's first Job, and again whenever the policy is seen edited or deleted.
        """
        client_apply(self.api, builders.step_network_policy(namespace, self.settings.jobs))
        self._fenced.add(namespace)

    def _act(self, descendant: Descendant, observed: Observed, plan: Plan, view: View) -> bool:
        """Create the Jobs the plan asks for, and sign here; whether a signing ran."""
        namespace = descendant.metadata.namespace or "default"
        signed = False
        for step, attempt in plan.create:
            if step == "sign":
                self._sign(descendant, observed, attempt)
                signed = True
                continue
            task = self._task(descendant, observed, step, view)
            self.fence_once(namespace)
            policy = view.policy(namespace, descendant.spec.policy_ref.name)
            body = builders.job(
                descendant,
                step,
                attempt,
                self.settings.jobs,
                task,
                job_deadline(descendant.spec, policy.spec if policy is not None else None),
            )
            if create_if_absent(self.api, body):
                if attempt > 1:
                    metrics.JOB_RETRIES.labels(step).inc()
                log.info(
                    "created %s job attempt %d for %s", step, attempt, descendant.metadata.name
                )
        return signed

    def _sign(self, descendant: Descendant, observed: Observed, attempt: int) -> None:
        """Re-hash the artifact and sign it and its scorecard here, as the operator.

        The signing material stays in the operator's pod, in its own namespace: no pod in a
        tenant namespace ever mounts it. A result already in the store (signed before a restart)
        is taken as it is, so an artifact is not signed twice for one attempt.
        """
        assert observed.breed is not None and observed.evaluate is not None
        namespace = descendant.metadata.namespace or "default"
        name = descendant.metadata.name
        store = self.settings.store
        started = datetime.now(UTC)
        code, reason = 0, None
        record = self._records(descendant)("sign", attempt)
        if read_result(record, SignResultFile) is None:
            scorecard = str(observed.evaluate.scorecard.uri)
            task = sign_task(descendant, observed.breed.artifact.id, scorecard, store, record)
            try:
                run_sign(task, *self.signer())
            except SigningError as error:  # the key, the certificate or sigstore: may recover
                code, reason = EXIT_FAILED, str(error)
            except ArtifactError as error:  # the artifact or scorecard is refused as it is
                code, reason = EXIT_REFUSED, str(error)
            except (OSError, ValueError) as error:
                code, reason = EXIT_FAILED, f"{type(error).__name__}: {error}"
            if code:
                metrics.JOB_FAILURES.labels("sign").inc()
                log.warning("signing %s/%s failed: %s", namespace, name, reason)
            if attempt > 1:
                metrics.JOB_RETRIES.labels("sign").inc()
        self._signings.setdefault(str(descendant.metadata.uid), {})[attempt] = JobObservation(
            step="sign",
            attempt=attempt,
            name=job_name(name, "sign", attempt),
            phase="Failed" if code else "Succeeded",
            reason=reason,
            started_at=started,
            finished_at=datetime.now(UTC),
            exit_code=code or None,
        )

    def signer(self) -> tuple[Signer, str | None]:
        """The operator's signer and the identity it signs as."""
        if self.settings.signing_dir is None:
            raise SigningError("no signing material: STUDBOOK_SIGNING_DIR is not set")
        return signer_from_dir(self.settings.signing_dir)

    def _task(
        self, descendant: Descendant, observed: Observed, step: Step, view: View
    ) -> BreedTask | EvaluateTask:
        store = self.settings.job_store
        output = builders.OUTPUT_MOUNT
        namespace = descendant.metadata.namespace or "default"
        parents = [
            parent_artifact(view.descendant(namespace, ref.name)) for ref in descendant.spec.parents
        ]
        if step == "breed":
            return breed_task(descendant, parents, store, output)
        assert observed.breed is not None
        artifact = observed.breed.artifact
        if step == "evaluate":
            suite = view.suite(namespace, descendant.spec.evaluation_suite_ref.name)
            assert suite is not None
            subject = ParentArtifact(
                name=descendant.metadata.name,
                artifact_id=artifact.id,
                uri=artifact.uri,
                niche=descendant.spec.niche,
            )
            return evaluate_task(descendant, subject, parents, suite, store, output)
        raise ValueError(f"no Job runs the {step} step")

    def _patch_if_changed(
        self, namespace: str, name: str, current: dict[str, Any], status: DescendantStatus
    ) -> None:
        wire = status.to_wire()
        if wire != current:
            try:
                version = patch_status(self.api, Descendant, namespace, name, wire)
                self._written[f"{namespace}/{name}"] = version
            except ApiException as error:
                if error.status != 404:  # deleted meanwhile
                    raise


def finished(body: dict[str, Any]) -> bool:
    """Whether a Descendant's body is terminal and its status is of its current spec.

    Then nothing about it changes any more, whatever its Jobs do.
    """
    status = body.get("status") or {}
    current = status.get("observedGeneration") == body["metadata"].get("generation")
    return current and status.get("phase") in TERMINAL


def parent_artifact(parent: Descendant | None) -> ParentArtifact:
    """A Ready parent as a Job sees it (admission made sure it is Ready)."""
    assert parent is not None and parent.status is not None
    assert parent.status.artifact is not None
    return ParentArtifact(
        name=parent.metadata.name,
        artifact_id=parent.status.artifact.id,
        uri=parent.status.artifact.uri,
        niche=parent.spec.niche,
    )


def termination_reason(exit_code: int, reason: str | None, message: str | None) -> str:
    """Why a container failed, in one line, from its terminated state.

    A step writes one sentence as its termination message; where it wrote none (killed, or a
    crash before it could), the Job's pods fall back to their log tail, whose last line is
    the likeliest cause. Only a status the step did not choose itself is worth naming.
    """
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if exit_code in (EXIT_FAILED, EXIT_REFUSED) and lines:
        return lines[-1]
    detail = f": {lines[-1]}" if lines else ""
    return f"exit code {exit_code} ({reason or 'Error'}){detail}"


def gpus(job: dict[str, Any]) -> int:
    """The GPUs a Job's pod asks for."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    return int((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def _trusted(artifact: str) -> None:
    """Verifies nothing: the admission webhook leaves verification to reconciling."""


def timestamp(value: str | None) -> datetime | None:
    """A time as the API server writes it, or ``None``."""
    return datetime.fromisoformat(value) if value else None


def event_record(body: dict[str, Any], event: Event) -> dict[str, Any]:
    """The Kubernetes Event (core v1) that tells of ``event`` about the Descendant ``body``."""
    meta = body["metadata"]
    now = datetime.now(UTC).isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{meta['name']}.",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": "studbook"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def refusal(error: ApiException) -> str:
    """What the API server said when it refused a request: its message, else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or error.reason)


class EventPoster:
    """Posts a Descendant's transitions as Kubernetes events, from any thread."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def __call__(self, body: dict[str, Any], event: Event) -> None:
        """Post one event about the Descendant ``body``."""
        try:
            create(self.api, event_record(body, event))
        except ApiException as error:  # an event is a courtesy, never a reason to fail
            log.warning(
                "event %s for %s not posted: %s",
                event.reason,
                body["metadata"]["name"],
                refusal(error),
            )


class Reconciler(Protocol):
    """A controller the sweeper drives: the Descendant controller, or the BreedingRun one."""

    def reconcile(self, body: dict[str, Any], view: View) -> object:
        """Bring one object a step further."""

    def sweep_due(self, namespace: str, name: str, interval: float) -> bool:
        """Whether a sweep should look at an object now."""

    def done(self, body: dict[str, Any]) -> bool:
        """Whether nothing can change an object any more but an edit of it."""


class Sweeper:
    """Looks at every unfinished Descendant and BreedingRun periodically.

    So backoff expiries, queues and the wall clock need no event.
    """

    def __init__(
        self,
        controller: Controller,
        interval: float,
        acting: Callable[[Collection[str]], Collection[str]] | None = None,
        runs: Reconciler | None = None,
    ) -> None:
        self.controller = controller
        self.runs = runs
        self.interval = interval
        self.acting = acting
        self.view: View | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="studbook-sweeper", daemon=True)

    def start(self) -> None:
        """Start sweeping in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            view = self.view
            if view is not None:
                self.sweep(view)

    def sweep(self, view: View) -> None:
        """Reconcile every unfinished Descendant and run of the view where this replica may act.

        ``acting`` picks those namespaces when replicas peer; by default, all of them. Only
        those ``sweep_due`` names: in a burst, the event handlers are at the rest already, and
        sweeping them too would only repeat their writes.
        """
        kinds: list[tuple[Reconciler, list[tuple[Any, Any]]]] = [
            (self.controller, list(view.descendants.items()))
        ]
        if self.runs is not None:
            kinds.append((self.runs, list(view.runs.items())))
        namespaces: Collection[str] = {key[0] for _, entries in kinds for key, _ in entries}
        if self.acting is not None:
            try:
                namespaces = self.acting(namespaces)
            except Exception:  # not knowing whether a peer outranks us, act nowhere this time
                log.exception("peering unreadable; not sweeping")
                return
        for controller, entries in kinds:
            for (namespace, _), values in entries:
                if namespace not in namespaces:
                    continue
                for body in list(values):
                    if controller.done(body):
                        continue
                    name = body["metadata"]["name"]
                    if not controller.sweep_due(namespace, name, self.interval):
                        continue
                    try:
                        controller.reconcile(body, view)
                    except Exception:  # one broken object must not stop the sweep
                        log.exception("sweeping %s failed", body["metadata"].get("name"))
