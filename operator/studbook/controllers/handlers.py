"""The kopf handlers: thin adapters from watch events and timers to the controllers.

Progress and the last-handled state live in annotations, never in ``status``: status is our
schema. Handlers return nothing, so kopf writes nothing into ``status.<handler>``.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf
from kubernetes import client, config

from studbook import GROUP, VERSION, metrics
from studbook.api.descendant import Descendant
from studbook.api.policy import BreedingPolicy
from studbook.api.suite import EvaluationSuite
from studbook.breeding.flow import TERMINAL, Event
from studbook.controllers.descendants import Controller
from studbook.controllers.resources import policy_status, suite_status
from studbook.controllers.settings import OperatorSettings
from studbook.k8s.client import get_object, patch_status
from studbook.k8s.jobs import LABEL_DESCENDANT

DESCENDANTS = (GROUP, VERSION, Descendant.crd.plural)
TIMER_INTERVAL = 10.0
"""Seconds between looks at a Descendant that is not finished: retries and backoff run on it."""


def _post(body: dict[str, Any], event: Event) -> None:
    kopf.event(
        kopf.Body(cast(kopf.RawBody, body)),
        type=event.type,
        reason=event.reason,
        message=event.message[:1024],
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Annotations for kopf's bookkeeping; our own events only; the controller in ``memo``."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    except config.ConfigException:
        api = config.new_client_from_config()  # type: ignore[no-untyped-call]
    memo.controller = Controller(api=api, settings=OperatorSettings.from_env(), post_event=_post)


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo.controller
    return controller


@kopf.on.event(*DESCENDANTS)
def descendant_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every change of a Descendant (our own status patches included) is looked at once."""
    if type == "DELETED":
        metrics.POPULATION.forget(str(body["metadata"].get("uid")))
        return
    _controller(memo).reconcile(dict(body))


@kopf.timer(
    *DESCENDANTS,
    interval=TIMER_INTERVAL,
    when=lambda status, **_: status.get("phase") not in TERMINAL,
)
def descendant_timer(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Unfinished Descendants are looked at again: backoff expiries need no event."""
    _controller(memo).reconcile(dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_DESCENDANT: kopf.PRESENT})
def job_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Job of a Descendant changed: look at its owner now rather than at the next tick."""
    if type == "DELETED":
        return
    controller = _controller(memo)
    namespace = body["metadata"]["namespace"]
    name = body["metadata"]["labels"][LABEL_DESCENDANT]
    owner = get_object(controller.api, Descendant, namespace, name)
    if owner is not None:
        controller.reconcile(owner)


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
