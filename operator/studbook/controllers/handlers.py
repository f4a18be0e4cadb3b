"""The kopf handlers: thin adapters from watch events and timers to the controllers.

kopf's progress lives in annotations, never in ``status``: status is our schema. No
last-handled state is kept at all (see ``NoDiffBase``). Handlers return nothing, so kopf writes
nothing into ``status.<handler>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from studbook import GROUP, VERSION, metrics
from studbook.api.descendant import Descendant, DescendantSpec
from studbook.api.policy import BreedingPolicy
from studbook.api.run import BreedingRun
from studbook.api.suite import EvaluationSuite
from studbook.breeding.runs import RUN_LABEL
from studbook.controllers import runs
from studbook.controllers.descendants import Controller, EventPoster, Sweeper, finished, refusal
from studbook.controllers.peering import PeeringGate
from studbook.controllers.resources import policy_status, suite_status
from studbook.controllers.settings import OperatorSettings
from studbook.controllers.view import View, forget, indexed, indexed_job
from studbook.k8s.client import api_client, get_object, patch_status
from studbook.k8s.jobs import LABEL_DESCENDANT, STEP_POLICY, job_phase

DESCENDANTS = (GROUP, VERSION, Descendant.crd.plural)
RUNS = (GROUP, VERSION, BreedingRun.crd.plural)
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
MANAGED_BY = "app.kubernetes.io/managed-by"
Indexed = dict[tuple[str, str], dict[str, Any]]
log = logging.getLogger("studbook.admission")
WORKERS = 32
"""Threads that reconcile. Reconciling mostly waits on the API server; enough threads keep new
Descendants moving."""
TIMER_INTERVAL = 20.0
"""Seconds between sweeps over unfinished Descendants: backoff expiries need no event. One
sweeper for all, rather than a kopf timer per object, keeps memory flat as the population grows."""

LIST_CHUNK = 100
"""Objects per page when kopf lists what it watches (at a start, or a resume after a pause): the
whole list in one response would be decoded at once, and the peak kept by the allocator."""


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps no last-handled state: every handler here is level-based.

    kopf diffs old and new essences only for change-detecting handlers (create, update, resume,
    delete, daemons, timers), and Studbook registers none: events and indexes look at the whole
    object each time. kopf still builds the new essence on every event, by deep-copying the whole
    body (a Job's pod template, a Descendant's scorecard) only to discard it; on a busy
    namespace that copying was half of kopf's event loop.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """An empty essence: nothing compares it."""
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """No stored essence."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing to store."""


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Annotations for kopf's bookkeeping; our own events and Jobs only; controller in memo."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # Only our Jobs (a Descendant's steps, a BreedingRun's trials) come from the API server.
    # Without this selector, an operator that watches all namespaces would receive every Job in
    # the cluster, and kopf would drop it only after parsing it and queueing it.
    settings.watching.label_selectors["batch", "v1", "jobs"] = f"{MANAGED_BY}=studbook"
    settings.watching.label_selectors[NETWORK_POLICIES] = f"{MANAGED_BY}=studbook"
    settings.execution.max_workers = WORKERS
    settings.watching.chunk_size = LIST_CHUNK
    memo.executor = settings.execution.executor
    # One connection for each thread that may call at once: the workers, the sweeper, and kopf's
    # event loop (the webhook, the peering gate).
    api = api_client(connections=WORKERS + 2)
    memo.controller = Controller(
        api=api, settings=OperatorSettings.from_env(), post_event=EventPoster(api)
    )
    memo.runs = runs.RunController(descendants=memo.controller, post_event=EventPoster(api))
    peering = settings.peering
    gate = None
    if not peering.standalone:
        gate = PeeringGate(api, peering.name, peering.priority, peering.clusterwide)
    memo.sweeper = Sweeper(memo.controller, TIMER_INTERVAL, acting=gate, runs=memo.runs)
    memo.sweeper.start()


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    """Stop looking at unfinished Descendants and runs."""
    memo.sweeper.stop()


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo.controller
    return controller


# -- indexes: kopf keeps them current from its watch streams; reconciling reads only these ----
# Coroutines, though they never wait: kopf runs a plain function in its thread pool, behind the
# reconciles that wait there on the API server, so every watch event would queue for a thread.


@kopf.index(GROUP, VERSION, BreedingPolicy.crd.plural)
async def policy_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Indexed:
    """Policies by (namespace, name)."""
    return {(str(namespace), name): indexed(dict(body))}


@kopf.index(GROUP, VERSION, EvaluationSuite.crd.plural)
async def suite_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Indexed:
    """Suites by (namespace, name)."""
    return {(str(namespace), name): indexed(dict(body))}


@kopf.index(*DESCENDANTS)
async def descendant_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Indexed:
    """Descendants by (namespace, name)."""
    return {(str(namespace), name): indexed(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={LABEL_DESCENDANT: kopf.PRESENT})
async def job_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Indexed:
    """Jobs by (namespace, owning Descendant), as far as reconciling reads them."""
    return {(str(namespace), labels[LABEL_DESCENDANT]): indexed_job(dict(body))}


@kopf.index(*RUNS)
async def run_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Indexed:
    """BreedingRuns by (namespace, name)."""
    return {(str(namespace), name): indexed(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
async def run_job_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Indexed:
    """Trial Jobs by (namespace, owning BreedingRun), as far as reconciling reads them."""
    return {(str(namespace), labels[RUN_LABEL]): indexed_job(dict(body))}


def _view(kwargs: dict[str, Any]) -> View:
    return View(
        policies=kwargs["policy_index"],
        suites=kwargs["suite_index"],
        descendants=kwargs["descendant_index"],
        jobs=kwargs["job_index"],
        runs=kwargs["run_index"],
        run_jobs=kwargs["run_job_index"],
    )


def _live_view(api: client.ApiClient, namespace: str, spec: DescendantSpec) -> View:
    """A spec's policy and parents read from the API server, for when the indexes are stale."""

    def one(cls: type[BreedingPolicy] | type[Descendant], name: str) -> dict[Any, Any]:
        body = get_object(api, cls, namespace, name)
        # As in kopf's indexes: a list of bodies per key.
        return {} if body is None else {(namespace, name): [body]}

    parents: dict[Any, Any] = {}
    for ref in spec.parents:
        parents |= one(Descendant, ref.name)
    policies = one(BreedingPolicy, spec.policy_ref.name)
    return View(policies=policies, suites={}, descendants=parents, jobs={})


# -- admission (registered only with the webhook: studbook.controllers.webhook.enable) --------


def validate_descendant(
    body: kopf.Body, namespace: str | None, dryrun: bool, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Deny a new Descendant that its policy refuses, with the reasons reconciling would give.

    The same facts as reconciling, from the same indexes, judged by the same ``admit``; but
    Ready parents are not verified (re-hashing an artifact takes longer than the API server
    waits). A missing policy or parent, or one not Ready yet, is no refusal: the Descendant is
    created and waits for it. Reconciling decides again either way.
    """
    try:
        spec = Descendant.model_validate_json(json.dumps(dict(body))).spec
    except ValidationError:
        return  # reconciling rejects it, with pydantic's details in its status
    where = str(namespace)
    try:
        controller = _controller(memo)
        view = _view(kwargs)
        acting = memo.sweeper.acting
        if acting is not None and where not in acting({where}):
            # kopf stops a paused replica's watches, so its indexes are stale.
            view = _live_view(controller.api, where, spec)
        policy = view.policy(where, spec.policy_ref.name)
        if policy is None:
            return
        decision = controller.admission(where, spec, policy, view, verify=False)
    except Exception:
        # An error is no refusal: kopf would deny the request. Reconciling will judge it.
        log.exception("admission of a Descendant in %s left to reconciling", where)
        return
    if not decision.refusals:
        return
    if not dryrun:
        for refusal in decision.refusals:
            metrics.ADMISSIONS_REFUSED.labels(refusal.reason).inc()
    raise kopf.AdmissionError("; ".join(str(r) for r in decision.refusals), code=422)


# -- reconciliation ------------------------------------------------------------------------


# The event handlers are coroutines that decide in kopf's event loop whether an event needs a
# reconcile at all, and only then hand it to kopf's thread pool, where reconciling waits on the
# API server: most events (our own status patches, Jobs still queued) need none.


async def _reconcile(memo: kopf.Memo, body: dict[str, Any], view: View) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(memo.executor, _controller(memo).reconcile, body, view)


@kopf.on.event(*DESCENDANTS)
async def descendant_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Every change of a Descendant is looked at once, but for our own status patches."""
    if type == "DELETED":
        metrics.POPULATION.forget(str(body["metadata"].get("uid")))
        forget(str(body["metadata"].get("uid")))
        return
    view = _view(kwargs)
    memo.sweeper.view = view
    descendant = dict(body)
    controller = _controller(memo)
    # Decided here, not in a thread: an operator start lists every finished Descendant.
    if not controller.echoes(descendant) and not controller.counted(descendant):
        await _reconcile(memo, descendant, view)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_DESCENDANT: kopf.PRESENT})
async def job_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A Job of a Descendant changed: look at its owner now rather than at the next tick.

    Not while the Job runs no pod: its owner's status has said so since the Job was created
    (the flow lists a Job as it asks for it), so a reconcile would only repeat that status,
    from a body that may not show it yet. The sweeper still looks at such Descendants. Nor when
    its owner has finished: the Jobs of every finished Descendant come by at an operator start.
    """
    if type == "DELETED" or job_phase(dict(body)) == "Pending":
        return
    view = _view(kwargs)
    owner = view.descendant_body(body["metadata"]["namespace"], labels[LABEL_DESCENDANT])
    if owner is not None and not finished(owner):
        await _reconcile(memo, owner, view)


def _runs(memo: kopf.Memo) -> runs.RunController:
    controller: runs.RunController = memo.runs
    return controller


async def _reconcile_run(memo: kopf.Memo, body: dict[str, Any], view: View) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(memo.executor, _runs(memo).reconcile, body, view)


@kopf.on.event(*RUNS)
async def run_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Every change of a BreedingRun is looked at once, but for our own status patches.

    Nor a finished run's: an edit of its budget makes its status stale, so that one counts.
    """
    if type == "DELETED":
        forget(str(body["metadata"].get("uid")))
        return
    view = _view(kwargs)
    memo.sweeper.view = view
    run = dict(body)
    if not _runs(memo).echoes(run) and not runs.finished(run):
        await _reconcile_run(memo, run, view)


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
async def trial_job_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A trial Job changed (admitted by a queue, running, finished): look at its run now."""
    if type == "DELETED":
        return
    view = _view(kwargs)
    owner = view.run_body(body["metadata"]["namespace"], labels[RUN_LABEL])
    if owner is not None and not runs.finished(owner):
        await _reconcile_run(memo, owner, view)


@kopf.on.event(*NETWORK_POLICIES, labels={MANAGED_BY: "studbook"})
async def network_policy_event(
    type: str | None, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A step NetworkPolicy was listed, edited or deleted: apply it as it should be.

    Applying what is already there changes nothing and so brings no further event.
    """
    if name != STEP_POLICY or namespace is None:
        return
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(memo.executor, _controller(memo).fence, namespace)
    except ApiException as error:
        if "being terminated" in str(error.body):
            return  # its namespace is going, and the policy with it
        log.warning("cannot restore NetworkPolicy %s/%s: %s", namespace, name, refusal(error))


@kopf.on.event(GROUP, VERSION, BreedingPolicy.crd.plural)
def policy_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Validate a BreedingPolicy and say so in its status."""
    if type == "DELETED":
        return
    status = policy_status(dict(body))
    if status != body.get("status"):
        meta = body["metadata"]
        patch_status(_controller(memo).api, BreedingPolicy, meta["namespace"], meta["name"], status)


@kopf.on.event(GROUP, VERSION, EvaluationSuite.crd.plural)
def suite_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Validate an EvaluationSuite, compute its digest, and say so in its status."""
    if type == "DELETED":
        return
    status = suite_status(dict(body))
    if status != body.get("status"):
        meta = body["metadata"]
        patch_status(
            _controller(memo).api, EvaluationSuite, meta["namespace"], meta["name"], status
        )
