"""Refusals at admission against the real control plane, with real signed parents in a store.

Parents are sealed and signed in the test's store and their Descendants marked Ready the way
the operator marks them, before the operator starts; the operator must then refuse each child
for its specific reason and create no Job for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from studbook.artifacts import Store
from studbook.artifacts.signing import sign_artifact
from tests.builders import Body
from tests.cluster.controlplane import LOCAL_NODE_LABEL, LOCAL_NODE_TAINT
from tests.operator_fixtures import (
    OperatorProcess,
    apply,
    descendant_status,
    ready_parent,
    seal_model,
    signing_key,
    wait_for,
)

pytestmark = pytest.mark.cluster


def test_each_refusal_has_its_reason_and_creates_no_job(
    kube: client.ApiClient, namespace: str, idle_operator: OperatorProcess, tmp_path: Path
) -> None:
    store = Store.open(idle_operator.store)
    signer, public = signing_key(tmp_path)
    signed = {}
    for name in ("base", "sentiment", "topic", "gpt2ish", "sharealike", "tampered"):
        signed[name] = seal_model(store, tmp_path, name)
        sign_artifact(store, signed[name], signer)
    unsigned = seal_model(store, tmp_path, "unsigned")
    tampered_file = Path(store.package_path(signed["tampered"])) / "files" / "model.safetensors"
    os.chmod(tampered_file, 0o644)
    tampered_file.write_bytes(b"tampered" * 100)

    policy = (
        Body.of("policy")
        .set(
            "spec.trustedSigners",
            [{"name": "test-key", "kind": "key", "key": {"publicKey": public}}],
        )
        .set("spec.allowedOperators", ["import", "lora", "merge", "finetune"])
    )
    apply(kube, namespace, policy.manifest)
    apply(kube, namespace, Body.of("suite").manifest)
    for name in ("base", "sentiment", "topic"):
        ready_parent(kube, namespace, name, signed[name], store)
    ready_parent(
        kube,
        namespace,
        "gpt2ish",
        signed["gpt2ish"],
        store,
        **{"spec.compatibility.tokenizerId": "gpt2-bpe-50257"},
    )
    ready_parent(
        kube,
        namespace,
        "sharealike",
        signed["sharealike"],
        store,
        **{"spec.license": "CC-BY-SA-4.0"},
    )
    ready_parent(kube, namespace, "tampered", signed["tampered"], store)
    ready_parent(kube, namespace, "unsigned", unsigned, store)

    def lora(name: str, parent: str, rank: int = 8) -> dict[str, Any]:
        return (
            Body.of("lora-specialist")
            .set("metadata.name", name)
            .set("spec.parents", [{"name": parent}])
            .set("spec.operator.lora.rank", rank)
            .set("spec.compatibility.architecture", "BertModel")
            .manifest
        )

    def merge(name: str, other: str) -> dict[str, Any]:
        return (
            Body.of("ties-merge")
            .set("metadata.name", name)
            .set("spec.parents", [{"name": "base"}, {"name": "sentiment"}, {"name": other}])
            .set("spec.operator.merge.base", "base")
            .set(
                "spec.operator.merge.weights",
                [{"parent": "sentiment", "weight": 1.0}, {"parent": other, "weight": 1.0}],
            )
            .set("spec.operator.merge.overrides", [])
            .manifest
        )

    quantize = (
        Body.of("quantization")
        .set("metadata.name", "forbidden-quantize")
        .set("spec.parents", [{"name": "base"}])
    )
    # The node that runs pods as processes on this host: a tenant may not place a pod there.
    local_runner = (
        Body(lora("forbidden-placement", "base"))
        .set("spec.resources.nodeSelector", {LOCAL_NODE_LABEL[0]: LOCAL_NODE_LABEL[1]})
        .set("spec.resources.tolerations", [LOCAL_NODE_TAINT])
    )
    cases = {
        "from-unsigned": (lora("from-unsigned", "unsigned"), "ParentUnsigned"),
        "from-tampered": (lora("from-tampered", "tampered"), "ParentTampered"),
        "forbidden-quantize": (quantize.manifest, "OperatorForbidden"),
        "rank-over-budget": (lora("rank-over-budget", "base", rank=128), "BudgetExceeded"),
        "incompatible-merge": (merge("incompatible-merge", "gpt2ish"), "IncompatibleParents"),
        "licence-conflict": (merge("licence-conflict", "sharealike"), "LicenseConflict"),
        "forbidden-placement": (local_runner.manifest, "SchedulingForbidden"),
        "admitted": (lora("admitted", "base"), None),
    }
    for manifest, _ in cases.values():
        apply(kube, namespace, manifest)
    idle_operator.start()

    for name, (_, reason) in cases.items():
        if reason is None:
            continue
        wait_for(
            lambda n=name: descendant_status(kube, namespace, n).get("phase") == "Rejected",
            timeout=60,
            what=f"{name} rejected",
            log=idle_operator.log,
        )
        status = descendant_status(kube, namespace, name)
        admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
        assert admitted["reason"] == reason, (name, status["message"])
    wait_for(
        lambda: descendant_status(kube, namespace, "admitted").get("phase") == "Breeding",
        timeout=60,
        what="admitted child breeding",
        log=idle_operator.log,
    )
    jobs = client.BatchV1Api(kube).list_namespaced_job(namespace).items
    assert sorted(j.metadata.name for j in jobs) == ["admitted-breed-1"]
