"""The controller's parse cache against the real control plane: it keeps what is in flight and
what is depended on, not every Descendant the operator has seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from studbook.controllers import view as view_module
from studbook.controllers.descendants import Controller
from studbook.controllers.settings import OperatorSettings
from studbook.controllers.view import View, forget
from studbook.k8s.jobs import JobSettings
from tests.builders import Body
from tests.manifests import example
from tests.operator_fixtures import apply, read_resource

pytestmark = pytest.mark.cluster


def _index(kube: client.ApiClient, namespace: str, plural: str, name: str) -> dict[Any, Any]:
    """An index as kopf hands it over: a list of bodies per (namespace, name)."""
    return {(namespace, name): [read_resource(kube, namespace, plural, name)]}


def test_a_finished_descendant_is_parsed_again_only_when_named_as_a_parent(
    kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    allowed = Body.of("policy").set("spec.allowedOperators", ["import", "lora"]).manifest
    policy = apply(kube, namespace, allowed)
    apply(kube, namespace, example("suite"))
    merge = apply(kube, namespace, Body.of("ties-merge").manifest)
    # Its parent does not exist yet: it waits, unfinished.
    waiting = apply(kube, namespace, example("lora-specialist"))
    view = View(
        policies=_index(kube, namespace, "breedingpolicies", "standard"),
        suites=_index(kube, namespace, "evaluationsuites", "sentiment-topic"),
        descendants={},
        jobs={},
    )
    jobs = JobSettings(trainer_image="t", artifact_volume={"emptyDir": {}})
    settings = OperatorSettings(store=str(tmp_path), jobs=jobs)
    controller = Controller(api=kube, settings=settings, post_event=lambda body, event: None)
    policy_uid, merge_uid, waiting_uid = (
        str(o["metadata"]["uid"]) for o in (policy, merge, waiting)
    )
    try:
        merge_name = merge["metadata"]["name"]
        controller.reconcile(read_resource(kube, namespace, "descendants", merge_name), view)
        rejected = read_resource(kube, namespace, "descendants", merge_name)
        assert rejected["status"]["phase"] == "Rejected"
        assert merge_uid not in view_module._PARSED, "a finished Descendant stays parsed"
        assert policy_uid in view_module._PARSED, "the policy it read is parsed once"

        waiting_name = waiting["metadata"]["name"]
        controller.reconcile(read_resource(kube, namespace, "descendants", waiting_name), view)
        pending = read_resource(kube, namespace, "descendants", waiting_name)
        assert pending["status"]["phase"] == "Pending"
        assert waiting_uid in view_module._PARSED, "a waiting Descendant is swept again"

        # Named as a parent, the finished one is parsed again, from its current version.
        parents = View(
            policies={}, suites={}, descendants={(namespace, merge_name): [rejected]}, jobs={}
        )
        parent = parents.descendant(namespace, merge_name)
        assert parent is not None and parent.status is not None
        assert parent.status.phase == "Rejected"
        assert view_module._PARSED[merge_uid][2] is parent
    finally:
        for uid in (policy_uid, merge_uid, waiting_uid):
            forget(uid)
