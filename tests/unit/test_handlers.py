"""The kopf registrations: level-based only, which lets ``NoDiffBase`` keep nothing, run in
kopf's event loop, and hand only real work to its threads."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.structs.references import Resource
from kubernetes.config import kube_config
from tests.builders import Body

from studbook import cli, metrics
from studbook.api.descendant import DescendantStatus
from studbook.breeding.runs import RUN_LABEL
from studbook.controllers import handlers  # importing it registers the handlers
from studbook.controllers.descendants import Controller
from studbook.controllers.view import View
from studbook.k8s.client import api_client
from studbook.k8s.jobs import LABEL_DESCENDANT


def test_no_handler_compares_old_and_new_so_no_diff_base_is_needed() -> None:
    registry = kopf.get_default_registry()
    # kopf's registries by kind of handler (kopf/_core/intents/registries.py); changing and
    # spawning handlers are the ones that read a diff base.
    names = {h.id for h in registry._watching.get_all_handlers()}
    assert {"descendant_event", "job_event", "policy_event", "suite_event"} <= names
    assert not registry._changing.get_all_handlers(), "an on.create/update/delete needs a diff base"
    assert not registry._spawning.get_all_handlers(), "a daemon or timer needs a diff base"


def test_indexes_and_event_handlers_run_in_the_event_loop() -> None:
    # kopf runs a plain function in its thread pool, where reconciles wait on the API server:
    # each watch event would first wait for a free thread.
    for handler in (
        handlers.policy_index,
        handlers.suite_index,
        handlers.descendant_index,
        handlers.job_index,
        handlers.descendant_event,
        handlers.job_event,
    ):
        assert inspect.iscoroutinefunction(handler), handler.__name__


class _Recording(Controller):
    """A controller that records what it is asked to reconcile instead of reconciling."""

    def __init__(self) -> None:
        super().__init__(api=cast(Any, None), settings=cast(Any, None), post_event=print)
        self.reconciled: list[str] = []

    def reconcile(self, body: dict[str, Any], view: View) -> None:
        self.reconciled.append(body["metadata"]["name"])


def _deliver(memo: kopf.Memo, descendant: dict[str, Any], job: dict[str, Any]) -> None:
    """One Descendant event and one event of its Job, as kopf would hand them over."""
    indexes = {
        "policy_index": {},
        "suite_index": {},
        "descendant_index": {("a", "x"): [descendant]},
        "job_index": {},
        "run_index": {},
        "run_job_index": {},
    }

    async def both() -> None:
        await handlers.descendant_event(type=None, body=kopf.Body(descendant), memo=memo, **indexes)
        await handlers.job_event(
            type=None,
            body=kopf.Body(job),
            labels=job["metadata"]["labels"],
            memo=memo,
            **indexes,
        )

    asyncio.run(both())


def test_finished_descendants_and_their_jobs_are_decided_in_the_loop() -> None:
    # An operator start lists every finished Descendant and all their Jobs: each would
    # otherwise wait for a thread only to learn there is nothing to do.
    descendant = Body.of("lora-specialist").set("metadata.namespace", "a")
    descendant.set("metadata.name", "x").set("metadata.generation", 1)
    descendant.set("metadata.uid", "uid-of-x")
    descendant.set("status", DescendantStatus(phase="Ready", observed_generation=1).to_wire())
    job = {
        "metadata": {"name": "x-sign-1", "namespace": "a", "labels": {LABEL_DESCENDANT: "x"}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    memo = kopf.Memo()
    memo.controller = _Recording()
    memo.executor = ThreadPoolExecutor(1)
    memo.sweeper = SimpleNamespace(view=None)
    try:
        _deliver(memo, descendant.manifest, job)
        assert memo.controller.reconciled == []
        # Its spec changed since: no longer finished, both events count.
        descendant.set("metadata.generation", 2)
        _deliver(memo, descendant.manifest, job)
        assert memo.controller.reconciled == ["x", "x"]
    finally:
        memo.executor.shutdown()
        metrics.POPULATION.forget("uid-of-x")


def _kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig where the client looks by default; no API server behind it."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kubeconfig))
    # Where the client looks by default, read from $KUBECONFIG as it was imported.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_the_api_client_keeps_a_connection_for_each_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # urllib3 drops a connection that comes back to a full pool: a TLS handshake per request.
    _kubeconfig(tmp_path, monkeypatch)
    api = api_client(connections=handlers.WORKERS + 2)
    assert api.configuration.host == "https://127.0.0.1:6443"
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == handlers.WORKERS + 2


def test_the_operator_freezes_what_it_loaded_before_kopf_starts() -> None:
    # Full collections walked every module and class on each burst of Descendants.
    threshold = gc.get_threshold()
    try:
        cli._spare_collector()
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold()[0] > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_only_studbooks_jobs_are_watched_and_lists_come_in_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the server: kopf would receive every Job of the cluster and drop all but ours itself.
    _kubeconfig(tmp_path, monkeypatch)
    monkeypatch.setenv("STUDBOOK_STORE", str(tmp_path / "store"))
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    settings.peering.standalone = True
    handlers.configure(settings=settings, memo=memo)
    try:
        selectors = settings.watching.label_selectors
        jobs = Resource("batch", "v1", "jobs", kind="Job")
        assert selectors.collect(jobs) == ["app.kubernetes.io/managed-by=studbook"]
        assert selectors.collect(Resource("batch", "v1", "cronjobs", kind="CronJob")) == []
        descendants = Resource(*handlers.DESCENDANTS, kind="Descendant")
        assert selectors.collect(descendants) == []  # parents are read from every Descendant
        # The handlers' own filter names the same label.
        found = {h.id: h for h in kopf.get_default_registry()._watching.get_all_handlers()}
        assert found["job_event"].labels == {LABEL_DESCENDANT: kopf.PRESENT}
        assert found["trial_job_event"].labels == {RUN_LABEL: kopf.PRESENT}
        # A resume lists thousands of finished objects: in one response, decoded at once, the
        # peak stayed in the operator's RSS.
        assert settings.watching.chunk_size == handlers.LIST_CHUNK
    finally:
        memo.sweeper.stop()
