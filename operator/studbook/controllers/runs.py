"""Reconcile one BreedingRun: observe the cluster and the store, plan, act.

The decisions live in :mod:`studbook.breeding.runflow` (and the search core it replays); this
module reads what the flow needs and carries out its plan in the order that keeps a restart
safe: the ledger first (so no Job runs trials it does not record), then the trial Jobs, the
Descendants of the front, the ledger's signature, and last the status and events. Admission and
parents are judged as for a Descendant, by the Descendant controller's own helpers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import fsspec
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from studbook import metrics
from studbook.api import reasons
from studbook.api.ledger import Ledger
from studbook.api.run import BreedingRun, BreedingRunStatus
from studbook.api.task import TRIALS_FILE, ledger_uri, output_uri
from studbook.artifacts import Store
from studbook.artifacts.errors import ArtifactError
from studbook.artifacts.results import read_untrusted, wire_bytes, write_bytes
from studbook.artifacts.signing import sign_ledger
from studbook.breeding.admission import job_deadline
from studbook.breeding.runflow import (
    RunObserved,
    RunPlan,
    TrialJob,
    reconcile,
    trial_results,
)
from studbook.breeding.runs import (
    admit_run,
    descendant_name,
    probe_specs,
    run_key,
    trial_task,
)
from studbook.controllers.descendants import (
    Controller,
    EventSink,
    gpus,
    parent_artifact,
    timestamp,
)
from studbook.controllers.view import View, forget, typed
from studbook.k8s import jobs as builders
from studbook.k8s.client import create_if_absent, patch_status

log = logging.getLogger("studbook.runs")

RESULTS_LIMIT = 64 * 2**20
"""The largest ``trials.jsonl`` read from a trial Job's output."""
CONFIG_LIMIT = 2**20
"""The largest model configuration read from a parent package (for its layer count)."""
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
"""Keys of a Hugging Face configuration that give the layer count."""
SIGNATURE_SUFFIX = ".sig"
"""The ledger's signature bundle lies beside it, under its name plus this."""


def finished(body: dict[str, Any]) -> bool:
    """Whether a run's body is final for its current spec: nothing it owns changes it any more.

    Stopped (Succeeded or Failed), its status of the current generation, its ledger signed if it
    has one, and every point of its front a Descendant.
    """
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    if status.get("phase") not in ("Succeeded", "Failed"):
        return False
    if status.get("ledgerUri"):
        signed = any(
            c.get("type") == reasons.SIGNED and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if not signed:
            return False
    if status.get("phase") == "Failed":
        return True
    return all(p.get("descendant") for p in status.get("paretoFront") or [])


@dataclass
class RunController:
    """What reconciling runs needs across calls; admission and parents come from ``descendants``."""

    descendants: Controller
    post_event: EventSink
    _locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    _written: dict[str, str] = field(default_factory=dict)
    _looked_at: dict[str, float] = field(default_factory=dict)

    @property
    def api(self) -> client.ApiClient:
        """The API client."""
        return self.descendants.api

    @property
    def store(self) -> str:
        """The artifact store as the operator reaches it."""
        return self.descendants.settings.store

    def echoes(self, body: dict[str, Any]) -> bool:
        """Whether a body is exactly what our own last status patch made of it."""
        meta = body["metadata"]
        written = self._written.get(f"{meta['namespace']}/{meta['name']}")
        return written is not None and written == meta.get("resourceVersion")

    def done(self, body: dict[str, Any]) -> bool:
        """Whether a run is :func:`finished`: the sweeper passes it by."""
        return finished(body)

    def sweep_due(self, namespace: str, name: str, interval: float) -> bool:
        """Whether a sweep should look at a run: one was looked at, but not lately."""
        last = self._looked_at.get(f"{namespace}/{name}")
        return last is not None and time.monotonic() - last >= interval

    def reconcile(self, body: dict[str, Any], view: View) -> RunPlan | None:
        """Bring one run a step further; returns the plan carried out."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        started = time.perf_counter()
        with self._locks[key]:
            self._looked_at[key] = time.monotonic()
            try:
                plan = self._reconcile(body, view)
            except Exception:
                metrics.RECONCILES.labels("BreedingRun", "error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.labels("BreedingRun").observe(
                    time.perf_counter() - started
                )
        metrics.RECONCILES.labels("BreedingRun", "ok").inc()
        return plan

    # -- observing ------------------------------------------------------------------------

    def _reconcile(self, body: dict[str, Any], view: View) -> RunPlan | None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        current = body.get("status") or {}
        if finished(body):
            return None
        try:
            run = typed(BreedingRun, body)
        except ValidationError as error:
            status = BreedingRunStatus(phase="Failed", message=f"invalid spec: {error}"[:4096])
            self._patch_if_changed(namespace, name, current, status)
            return None
        observed = self._observe(run, view)
        plan = reconcile(observed)
        signing_error = self._act(run, observed, plan, view)
        if plan.sign:
            # Signed here, now: plan again with the outcome, so status says so at once.
            observed = replace(
                observed,
                ledger=plan.ledger or observed.ledger,
                jobs={},
                signed=signing_error is None,
                signing_error=signing_error,
            )
            events = plan.events
            plan = reconcile(observed)
            plan = replace(plan, events=events)
        self._patch_if_changed(namespace, name, current, plan.status)
        for event in plan.events:
            self.post_event(body, event)
        if finished({**body, "status": plan.status.to_wire()}):
            forget(str(run.metadata.uid))
        return plan

    def _observe(self, run: BreedingRun, view: View) -> RunObserved:
        spec = run.spec
        namespace = run.metadata.namespace or "default"
        uri = ledger_uri(self.store, namespace, run.metadata.name, str(run.metadata.uid))
        base = RunObserved(run=run, now=datetime.now(UTC), ledger_uri=uri)
        policy = view.policy(namespace, spec.policy_ref.name)
        suite = view.suite(namespace, spec.evaluation_suite_ref.name)
        missing = []
        if policy is None:
            missing.append((reasons.POLICY_NOT_FOUND, f"policy {spec.policy_ref.name!r}"))
        if suite is None:
            name = spec.evaluation_suite_ref.name
            missing.append((reasons.SUITE_NOT_FOUND, f"suite {name!r}"))
        if policy is None or suite is None:
            return replace(base, missing=tuple(missing))
        ledger, error = self._ledger(uri)
        # Parents are verified (re-hashed, signatures checked) before the first trial; the
        # trials verify what they load, so a started search does not re-hash them every look.
        parents = {
            ref.name: self.descendants.parent(
                namespace, policy, view.descendant(namespace, ref.name), verify=ledger is None
            )
            for ref in spec.parent_pool
        }
        decision = admit_run(run, suite, policy.spec, parents)
        missing += [(reasons.PARENT_NOT_FOUND, f"parent {p!r}") for p in decision.missing]
        if missing or decision.refusals or decision.waiting_for:
            return replace(base, missing=tuple(missing), decision=decision)
        pins = {
            p.name: facts.artifact_id
            for p in spec.parent_pool
            if (facts := parents[p.name]) is not None and facts.artifact_id is not None
        }
        running = {t.number for t in ledger.trials if t.state == "running"} if ledger else set()
        trials = ledger.trials if ledger else []
        names = {descendant_name(run.metadata.name, t.number) for t in trials}
        return replace(
            base,
            decision=decision,
            ledger=ledger,
            ledger_error=error,
            num_layers=self._num_layers(run, pins) if ledger is None else None,
            jobs=self._jobs(namespace, view.jobs_of_run(namespace, run.metadata.name), running),
            descendants=frozenset(n for n in names if view.descendant_body(namespace, n)),
            pins=pins,
            signed=_exists(uri + SIGNATURE_SUFFIX),
        )

    def _ledger(self, uri: str) -> tuple[Ledger | None, str | None]:
        try:
            raw = _read(uri)
        except FileNotFoundError:
            return None, None
        try:
            return Ledger.model_validate_json(raw), None
        except ValidationError as error:
            return None, f"{error.error_count()} fields do not validate ({uri})"

    def _num_layers(self, run: BreedingRun, pins: Mapping[str, str]) -> int | None:
        """The layer count of the run's base (else first) parent, read from its package."""
        if run.spec.search_space.layer_granularity == "model":
            return None
        reference = run.spec.base or run.spec.parent_pool[0].name
        path = f"{Store.open(self.store).package_path(pins[reference])}/files/config.json"
        try:
            raw = read_untrusted(path, CONFIG_LIMIT)
            config = json.loads(raw or b"{}")
        except (ArtifactError, ValueError) as error:
            log.warning("the layer count of %s is unreadable: %s", reference, error)
            return None
        found = next((config[k] for k in LAYER_KEYS if isinstance(config.get(k), int)), None)
        return found if isinstance(found, int) and found > 0 else None

    def _jobs(
        self, namespace: str, bodies: list[dict[str, Any]], running: set[int]
    ) -> dict[str, TrialJob]:
        out = {}
        for body in bodies:
            labels = body["metadata"].get("labels") or {}
            try:
                first = int(labels[builders.LABEL_FIRST_TRIAL])
                last = int(labels[builders.LABEL_LAST_TRIAL])
            except (KeyError, ValueError):
                continue
            job = TrialJob(body["metadata"]["name"], first, last, builders.job_phase(body))
            out[job.name] = self._trial_job(namespace, job, body, running)
        return out

    def _trial_job(
        self, namespace: str, job: TrialJob, body: dict[str, Any], running: set[int]
    ) -> TrialJob:
        """A trial Job with what the flow needs of it: why it waits or failed, its results."""
        found = builders.suspended(body)
        if found is not None:
            return replace(job, suspended=found[1])
        if not job.finished or not running.intersection(job.numbers):
            return job
        st = body.get("status") or {}
        started = timestamp(st.get("startTime"))
        ended = timestamp(st.get("completionTime")) or max(
            (
                moment
                for c in st.get("conditions") or []
                if (moment := timestamp(c.get("lastTransitionTime"))) is not None
            ),
            default=None,
        )
        seconds = (ended - started).total_seconds() if started and ended else 0.0
        reason = self.descendants.failure(namespace, body)[1] if job.phase == "Failed" else None
        results, refused = None, None
        uid = body["metadata"].get("uid")
        if uid:
            try:
                raw = read_untrusted(f"{output_uri(self.store, uid)}/{TRIALS_FILE}", RESULTS_LIMIT)
                results = trial_results(raw or b"", job.numbers)
            except ArtifactError as error:
                refused = str(error)
        return replace(
            job,
            reason=reason,
            results=results,
            refused=refused,
            seconds=max(0.0, seconds),
            gpu_seconds=max(0.0, seconds) * gpus(body),
        )

    # -- acting ---------------------------------------------------------------------------

    def _act(
        self, run: BreedingRun, observed: RunObserved, plan: RunPlan, view: View
    ) -> str | None:
        """Carry out the plan but its status; why signing failed, if it did."""
        signature = observed.ledger_uri + SIGNATURE_SUFFIX
        if plan.ledger is not None:
            if observed.signed:
                # The signature is of the ledger as it was; a ledger without one is being made.
                fs, path = fsspec.core.url_to_fs(signature)
                fs.rm_file(path)
            write_bytes(observed.ledger_uri, wire_bytes(plan.ledger))
            for outcome in plan.told:
                metrics.TRIALS.labels(outcome).inc()
        if plan.jobs:
            self._create_jobs(run, plan, view)
        for child in plan.descendants:
            body = child.to_wire()
            body["metadata"]["ownerReferences"] = [builders.owner_reference(run)]
            if create_if_absent(self.api, body):
                log.info("created Descendant %s of run %s", child.metadata.name, run_key(run))
        if not plan.sign:
            return None
        try:
            # The bytes in the store, exactly: those just written, or those found there.
            data = (
                wire_bytes(plan.ledger) if plan.ledger is not None else _read(observed.ledger_uri)
            )
            signer, _ = self.descendants.signer()
            bundle = sign_ledger(run_key(run), data, signer)
            write_bytes(signature, bundle)
        except (ArtifactError, OSError, ValueError) as error:
            log.warning("signing the ledger of %s failed: %s", run_key(run), error)
            return str(error) or type(error).__name__
        log.info("signed the ledger of %s", run_key(run))
        return None

    def _create_jobs(self, run: BreedingRun, plan: RunPlan, view: View) -> None:
        namespace = run.metadata.namespace or "default"
        spec = run.spec
        suite = view.suite(namespace, spec.evaluation_suite_ref.name)
        policy = view.policy(namespace, spec.policy_ref.name)
        assert suite is not None and policy is not None
        parents = [parent_artifact(view.descendant(namespace, p.name)) for p in spec.parent_pool]
        settings = self.descendants.settings
        deadline = job_deadline(probe_specs(run)[0], policy.spec)
        self.descendants.fence_once(namespace)
        for batch in plan.jobs:
            task = trial_task(
                run, suite, parents, settings.job_store, builders.OUTPUT_MOUNT, batch.trials
            )
            body = builders.trial_job(run, settings.jobs, task, deadline)
            if create_if_absent(self.api, body):
                log.info("created trial Job %s of run %s", batch.name, run_key(run))

    def _patch_if_changed(
        self, namespace: str, name: str, current: dict[str, Any], status: BreedingRunStatus
    ) -> None:
        wire = status.to_wire()
        if wire != current:
            try:
                version = patch_status(self.api, BreedingRun, namespace, name, wire)
                self._written[f"{namespace}/{name}"] = version
            except ApiException as error:
                if error.status != 404:  # deleted meanwhile
                    raise


def _read(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as handle:
        data: bytes = handle.read()
    return data


def _exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.exists(path))
