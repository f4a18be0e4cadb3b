"""The admission webhook against the real control plane: the API server calls the operator.

The API server denies a Descendant the policy refuses, with admission's reasons, and creates
one the policy allows even though its parent does not exist yet; a replica paused by its peering
judges the same, from the API server instead of its stale indexes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from studbook import GROUP, VERSION
from studbook.controllers.peering import MAX_PRIORITY, PAUSED
from studbook.controllers.webhook import CONFIGURATION
from tests.builders import Body
from tests.cluster.controlplane import free_port
from tests.cluster.fixtures import apply_peering_crds
from tests.operator_fixtures import OperatorProcess, apply, wait_for, webhook_configured

pytestmark = pytest.mark.cluster

PEERING = "studbook"


def _serving_webhook(
    kube: client.ApiClient, operator: OperatorProcess
) -> Iterator[OperatorProcess]:
    """The operator serving the webhook on 127.0.0.1; its configuration removed afterwards."""
    operator.extra_args += ["--webhook-port", str(free_port()), "--webhook-host", "127.0.0.1"]
    operator.start()
    yield operator
    operator.stop()
    # A killed operator leaves its webhook behind; later tests of this cluster must not meet it.
    try:
        client.AdmissionregistrationV1Api(kube).delete_validating_webhook_configuration(
            CONFIGURATION
        )
    except ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture
def webhook_operator(
    kube: client.ApiClient, idle_operator: OperatorProcess
) -> Iterator[OperatorProcess]:
    """The operator serving the webhook."""
    yield from _serving_webhook(kube, idle_operator)


@pytest.fixture
def paused_webhook_operator(
    kube: client.ApiClient, namespace: str, idle_operator: OperatorProcess
) -> Iterator[OperatorProcess]:
    """The operator serving the webhook, peered and then paused by a peer that outranks it and
    never leaves."""
    apply_peering_crds(kube)
    objects = client.CustomObjectsApi(kube)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
    objects.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", peering)
    idle_operator.extra_args += ["--peering", PEERING, "--priority", "1"]
    for operator in _serving_webhook(kube, idle_operator):
        # Held once the operator is up and serving, as a peer arriving later would.
        wait_for(
            lambda: webhook_configured(kube), what="the webhook configured", log=idle_operator.log
        )
        holder = {
            "priority": MAX_PRIORITY,
            "lifetime": 900,
            "lastseen": datetime.now(UTC).isoformat(),
        }
        objects.patch_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", PEERING, {"status": {"holder": holder}}
        )
        wait_for(
            lambda: PAUSED in idle_operator.log.read_text(), what="paused", log=idle_operator.log
        )
        yield operator


def _lora(name: str, rank: int = 8) -> dict[str, Any]:
    return (
        Body.of("lora-specialist")
        .set("metadata.name", name)
        .set("spec.parents", [{"name": "not-yet"}])
        .set("spec.operator.lora.rank", rank)
        .manifest
    )


def test_the_api_server_denies_what_the_policy_refuses(
    kube: client.ApiClient, namespace: str, webhook_operator: OperatorProcess
) -> None:
    objects = client.CustomObjectsApi(kube)
    policy = Body.of("policy").set("spec.allowedOperators", ["import", "lora"])
    apply(kube, namespace, policy.manifest)
    apply(kube, namespace, Body.of("suite").manifest)
    name = policy.manifest["metadata"]["name"]
    # The operator writes the policy's status after its index holds the policy.
    wait_for(
        lambda: objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "breedingpolicies", name
        ).get("status"),
        what="the policy indexed",
        log=webhook_operator.log,
    )
    wait_for(
        lambda: webhook_configured(kube), what="the webhook configured", log=webhook_operator.log
    )

    refused = {
        "forbidden-quantize": (
            Body.of("quantization").set("metadata.name", "forbidden-quantize").manifest,
            "OperatorForbidden: spec.operator.kind: operator 'quantize' is not allowed",
        ),
        "rank-over-budget": (
            _lora("rank-over-budget", rank=128),
            "BudgetExceeded: spec.operator.lora.rank: LoRA rank 128 exceeds the budget of 64",
        ),
    }
    for name, (manifest, reason) in refused.items():
        with pytest.raises(ApiException) as denied:
            apply(kube, namespace, manifest)
        assert denied.value.status == 422, denied.value.body
        assert "denied the request" in denied.value.body, denied.value.body
        assert reason in denied.value.body, denied.value.body
        with pytest.raises(ApiException) as absent:
            objects.get_namespaced_custom_object(GROUP, VERSION, namespace, "descendants", name)
        assert absent.value.status == 404

    # Its parent does not exist yet: no refusal, the Descendant waits in reconcile.
    created = apply(kube, namespace, _lora("waiting-for-parent"))
    assert created["metadata"]["name"] == "waiting-for-parent"


def test_a_paused_replica_judges_from_the_api_server(
    kube: client.ApiClient, namespace: str, paused_webhook_operator: OperatorProcess
) -> None:
    # kopf stops a paused replica's watches, yet the API server calls whichever replica the
    # webhook's configuration names: its indexes never saw the policy applied meanwhile.
    apply(
        kube, namespace, Body.of("policy").set("spec.allowedOperators", ["import", "lora"]).manifest
    )
    apply(kube, namespace, Body.of("suite").manifest)

    with pytest.raises(ApiException) as denied:
        apply(kube, namespace, _lora("rank-over-budget", rank=128))
    assert denied.value.status == 422, denied.value.body
    assert "BudgetExceeded: spec.operator.lora.rank" in denied.value.body, denied.value.body
    created = apply(kube, namespace, _lora("waiting-for-parent"))
    assert created["metadata"]["name"] == "waiting-for-parent"
    # Judged, not acted on: the paused replica wrote no status.
    assert "status" not in client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "descendants", "waiting-for-parent"
    )
