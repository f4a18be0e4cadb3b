"""The test control plane is a real one: apiserver validation, scheduling, controllers, RBAC.

Each test checks a behaviour that only the real components have, so a broken or faked piece
shows up here first.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import (
    FAKE_NODES,
    GPU_RESOURCE,
    ControlPlane,
)
from tests.cluster.fixtures import grant, load_crds, service_account_client
from tests.manifests import WRONG_MANIFESTS, WrongManifest, example

pytestmark = pytest.mark.cluster

GROUP, VERSION = "breeding.studbook.dev", "v1alpha1"
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def job_condition(batch: client.BatchV1Api, name: str, namespace: str) -> str | None:
    """The Job's terminal condition type (Complete or Failed), if it has one."""
    job = batch.read_namespaced_job_status(name, namespace)
    for cond in job.status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return str(cond.type)
    return None


def job_body(name: str, container: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container], **pod_spec}},
        },
    }


def test_every_crd_applies_and_is_established(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str
):
    crds = load_crds()
    assert crds, "crds/ holds no CustomResourceDefinition"
    ext = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    for crd in crds:
        name = crd["metadata"]["name"]  # type: ignore[index]
        assert name in cluster.crd_names
        served = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in served.status.conditions}
        assert conditions.get("Established") == "True", (name, conditions)
        assert conditions.get("NamesAccepted") == "True", (name, conditions)
        # Established means the apiserver serves the new resource: listing it works.
        listing = custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, served.spec.names.plural
        )
        assert listing["items"] == []


def test_gpu_job_is_scheduled_on_a_fake_gpu_node_and_completes(
    kube: client.ApiClient, namespace: str
):
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    container = {
        "name": "train",
        "image": "studbook/trainer:test",
        "command": ["python", "-m", "studbook_trainer"],
        "resources": {"limits": {GPU_RESOURCE: "1"}},
    }
    batch.create_namespaced_job(namespace, job_body("gpu-train", container))

    assert (
        wait_for("Job gpu-train to finish", lambda: job_condition(batch, "gpu-train", namespace))
        == "Complete"
    )
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=gpu-train").items
    assert len(pods) == 1
    node = pods[0].spec.node_name
    assert GPU_RESOURCE in FAKE_NODES[node], f"scheduled on {node}, which has no GPUs"
    assert pods[0].status.phase == "Succeeded"


def test_job_asking_for_more_gpus_than_any_node_stays_pending(
    kube: client.ApiClient, namespace: str
):
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    most = max(int(capacity.get(GPU_RESOURCE, "0")) for capacity in FAKE_NODES.values())
    container = {
        "name": "train",
        "image": "studbook/trainer:test",
        "command": ["python", "-m", "studbook_trainer"],
        "resources": {"limits": {GPU_RESOURCE: str(most + 1)}},
    }
    batch.create_namespaced_job(namespace, job_body("too-big", container))

    def unschedulable() -> client.V1Pod | None:
        for pod in core.list_namespaced_pod(namespace, label_selector="job-name=too-big").items:
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return pod
        return None

    pod = wait_for("the scheduler to report the pod Unschedulable", unschedulable)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    message = next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
    assert GPU_RESOURCE in message
    assert job_condition(batch, "too-big", namespace) is None


def test_deleting_an_owner_garbage_collects_its_children(kube: client.ApiClient, namespace: str):
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(3):
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}}
        )
    core.delete_namespaced_config_map("owner", namespace)

    def children_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return not names & {"child-0", "child-1", "child-2"}

    wait_for("the garbage collector to delete the children", children_gone)


def test_service_account_without_rights_gets_403(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str
):
    with service_account_client(cluster, kube, namespace, "nobody") as as_nobody:
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in str(refused.value.body)

        # RBAC, not a blanket refusal: a RoleBinding opens exactly what it grants.
        rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
        grant(kube, namespace, "nobody", "pod-reader", rules)

        def can_list() -> bool:
            try:
                client.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
            except ApiException as exc:
                assert exc.status == 403
                return False
            return True

        wait_for("the RoleBinding to take effect", can_list, timeout=10)
        with pytest.raises(ApiException) as still_refused:
            client.CoreV1Api(as_nobody).list_namespaced_secret(namespace)
        assert still_refused.value.status == 403


# -- the API server enforces the CRDs' schemas and CEL rules ---------------------------------


def _plural(kind: str) -> str:
    for crd in load_crds():
        names = crd["spec"]["names"]  # type: ignore[index]
        if names["kind"] == kind:
            return str(names["plural"])
    raise AssertionError(f"no CRD for kind {kind}")


def _create(kube: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(manifest)
    body["metadata"]["namespace"] = namespace
    # Strict, as kubectl does: unknown fields are refused instead of silently pruned.
    return client.CustomObjectsApi(kube).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, _plural(body["kind"]), body, field_validation="Strict"
    )


@pytest.mark.parametrize("wrong", WRONG_MANIFESTS, ids=lambda w: w.id)
def test_wrong_manifest_is_refused_by_the_api_server(
    kube: client.ApiClient, namespace: str, wrong: WrongManifest
):
    with pytest.raises(ApiException) as refused:
        _create(kube, namespace, wrong.build())
    # 422 for schema and CEL violations; 400 when strict decoding meets an unknown field.
    assert refused.value.status in (400, 422), refused.value.body
    message = json.loads(refused.value.body)["message"]
    # The apiserver names the offending field the way the typed models do.
    assert wrong.field in message, message


def test_descendant_spec_is_immutable(kube: client.ApiClient, namespace: str):
    created = _create(kube, namespace, example("lora-specialist"))
    name = created["metadata"]["name"]
    changed = copy.deepcopy(created)
    changed["spec"]["operator"]["lora"]["rank"] = 16
    custom = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as refused:
        custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, "descendants", name, changed
        )
    assert refused.value.status == 422
    assert "spec is immutable" in json.loads(refused.value.body)["message"]
    # Status is not spec: the controller may still record progress.
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "descendants", name, {"status": {"phase": "Pending"}}
    )


def test_breeding_run_only_changes_its_budget(kube: client.ApiClient, namespace: str):
    custom = client.CustomObjectsApi(kube)
    created = _create(kube, namespace, example("breeding-run"))
    name = created["metadata"]["name"]

    def replace(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "breedingruns", name)
        change(body["spec"])
        return custom.replace_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, namespace, "breedingruns", name, body
        )

    # A finished run continues with a larger budget.
    raised = replace(lambda spec: spec["budget"].update(maxTrials=192, patience=5))
    assert raised["spec"]["budget"]["maxTrials"] == 192
    # What the sampler proposes from may not change: the run resumes from its ledger.
    for change in (
        lambda spec: spec.update(seed=7),
        lambda spec: spec["budget"].update(population=16),
        lambda spec: spec["searchSpace"].update(blocks=2),
        lambda spec: spec["template"].update(dtype="bfloat16"),
    ):
        with pytest.raises(ApiException) as refused:
            replace(change)
        assert refused.value.status == 422, refused.value.body
        assert "only budget may change" in json.loads(refused.value.body)["message"]
