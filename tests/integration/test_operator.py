"""The operator against the real control plane: validation, admission, Jobs, retries."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.builders import Body
from tests.manifests import example
from tests.operator_fixtures import (
    OperatorProcess,
    apply,
    descendant_status,
    read_resource,
    wait_for,
)

pytestmark = pytest.mark.cluster


def _phase(kube: client.ApiClient, namespace: str, name: str) -> str | None:
    status = descendant_status(kube, namespace, name)
    phase: str | None = status.get("phase")
    return phase


def _jobs(kube: client.ApiClient, namespace: str) -> list[client.V1Job]:
    return list(client.BatchV1Api(kube).list_namespaced_job(namespace).items)


def test_policy_and_suite_are_validated(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    policy = wait_for(
        lambda: read_resource(kube, namespace, "breedingpolicies", "standard").get("status") or {},
        what="policy status",
        log=operator.log,
    )
    assert policy["phase"] == "Valid"
    assert policy["conditions"][0]["type"] == "Valid"
    suite = wait_for(
        lambda: (
            read_resource(kube, namespace, "evaluationsuites", "sentiment-topic").get("status")
            or {}
        ),
        what="suite status",
        log=operator.log,
    )
    assert suite["phase"] == "Valid" and suite["digest"].startswith("sha256:")


def test_forbidden_operator_is_rejected_without_a_job(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    policy = Body.of("policy").set("spec.allowedOperators", ["import", "lora"]).manifest
    apply(kube, namespace, policy)
    apply(kube, namespace, example("suite"))
    founder = Body.of("founder-import").set("metadata.name", "minilm-base").manifest
    apply(kube, namespace, Body.of("ties-merge").manifest)
    apply(kube, namespace, founder)
    wait_for(
        lambda: _phase(kube, namespace, "minilm-sentiment-topic-ties") == "Rejected",
        what="merge rejected",
        log=operator.log,
    )
    status = read_resource(kube, namespace, "descendants", "minilm-sentiment-topic-ties")["status"]
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "OperatorForbidden"
    assert "operator 'merge' is not allowed" in status["message"]
    jobs = [j.metadata.name for j in _jobs(kube, namespace)]
    assert not any(name.startswith("minilm-sentiment-topic-ties") for name in jobs)
    expected = (
        'studbook_admissions_refused_total{reason="OperatorForbidden"} 1.0',
        'studbook_descendants{phase="Rejected",stage="none"} 1.0',
        'studbook_reconciles_total{kind="Descendant",outcome="ok"}',
    )
    wait_for(
        lambda: all(line in operator.metrics() for line in expected),
        timeout=15,
        what=f"metrics {expected}",
        log=operator.log,
    )


def test_admitted_founder_gets_an_untrusted_owned_breed_job_and_fails_without_result(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    # No trainer runs on kwok's fake nodes: the Job completes without writing a result, which
    # the operator must treat as a failed attempt and, with no retries allowed, end in Failed.
    founder = Body.of("founder-import").set("spec.resources", {"backoffLimit": 0}).manifest
    created = apply(kube, namespace, founder)
    job = wait_for(lambda: _jobs(kube, namespace), what="breed job", log=operator.log)[0]
    assert job.metadata.name == "minilm-base-breed-1"
    (owner,) = job.metadata.owner_references
    assert owner.kind == "Descendant" and owner.uid == created["metadata"]["uid"]
    pod = job.spec.template.spec
    assert pod.automount_service_account_token is False
    assert pod.containers[0].security_context.read_only_root_filesystem is True
    wait_for(
        lambda: _phase(kube, namespace, "minilm-base") == "Failed",
        timeout=90,
        what="founder failed",
        log=operator.log,
    )
    status = read_resource(kube, namespace, "descendants", "minilm-base")["status"]
    assert "left no model in its output" in status["message"]
    assert [j["name"] for j in status["jobs"]] == ["minilm-base-breed-1"]
    assert len(_jobs(kube, namespace)) == 1, "exactly one breed Job"
    policies = client.NetworkingV1Api(kube).list_namespaced_network_policy(namespace).items
    assert [(p.metadata.name, p.spec.policy_types) for p in policies] == [
        ("studbook-steps", ["Ingress", "Egress"])
    ]


def _fence(kube: client.ApiClient, namespace: str) -> tuple[list[str], int, int] | None:
    """The step policy's fenced purposes and its counts of ingress and egress rules, if any."""
    networking = client.NetworkingV1Api(kube)
    found = networking.list_namespaced_network_policy(namespace).items
    policy = next((p for p in found if p.metadata.name == "studbook-steps"), None)
    if policy is None:
        return None
    (selector,) = policy.spec.pod_selector.match_expressions
    return list(selector.values), len(policy.spec.ingress or []), len(policy.spec.egress or [])


def test_the_step_network_policy_is_put_back_when_edited_or_deleted(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    apply(
        kube,
        namespace,
        Body.of("founder-import").set("spec.resources", {"backoffLimit": 0}).manifest,
    )
    fenced = (["breed", "evaluate", "trials"], 0, 0)
    wait_for(lambda: _fence(kube, namespace) == fenced, what="step policy", log=operator.log)
    networking = client.NetworkingV1Api(kube)
    # Opened up: sign pods let out, and egress anywhere.
    networking.patch_namespaced_network_policy(
        "studbook-steps",
        namespace,
        {
            "spec": {
                "podSelector": {
                    "matchExpressions": [
                        {
                            "key": "breeding.studbook.dev/purpose",
                            "operator": "In",
                            "values": ["breed"],
                        }
                    ]
                },
                "egress": [{}],
            }
        },
    )
    wait_for(lambda: _fence(kube, namespace) == fenced, what="edit undone", log=operator.log)
    networking.delete_namespaced_network_policy("studbook-steps", namespace)
    wait_for(lambda: _fence(kube, namespace) == fenced, what="policy back", log=operator.log)


def test_missing_parent_waits_and_continues_when_it_appears(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    apply(kube, namespace, example("lora-specialist"))
    wait_for(
        lambda: (
            "parent 'minilm-base' not found"
            in descendant_status(kube, namespace, "minilm-sentiment").get("message", "")
        ),
        what="waiting message",
        log=operator.log,
    )
    assert _phase(kube, namespace, "minilm-sentiment") == "Pending"
    assert _jobs(kube, namespace) == []


def test_a_job_that_cannot_start_says_why(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    founder = Body.of("founder-import")
    # No Kueue here: its Job stays suspended. No node has the GPU asked for.
    queued = founder.set("metadata.name", "queued").set(
        "spec.resources", {"queueName": "breeding", "backoffLimit": 0}
    )
    apply(kube, namespace, queued.manifest)
    unplaceable = Body.of("founder-import").set("metadata.name", "unplaceable")
    unplaceable.set("spec.resources", {"gpuType": "NVIDIA-L4", "backoffLimit": 0})
    apply(kube, namespace, unplaceable.manifest)

    def why(name: str, reason: str) -> dict[str, Any] | None:
        status = descendant_status(kube, namespace, name)
        bred = [c for c in status.get("conditions", []) if c["type"] == "Bred"]
        return status if bred and bred[0]["reason"] == reason else None

    status = wait_for(lambda: why("queued", "JobSuspended"), what="suspended", log=operator.log)
    assert status["message"] == (
        "breed attempt 1 cannot start: suspended until Kueue admits it to queue 'breeding'"
    )
    status = wait_for(
        lambda: why("unplaceable", "Unschedulable"),
        timeout=120,
        what="unschedulable",
        log=operator.log,
    )
    assert status["message"].startswith("breed attempt 1 cannot start: 0/"), status["message"]
    assert "node(s) didn't match" in status["message"], status["message"]
    events = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    assert {(e.involved_object.name, e.type, e.reason) for e in events} >= {
        ("queued", "Warning", "JobSuspended"),
        ("unplaceable", "Warning", "Unschedulable"),
    }
