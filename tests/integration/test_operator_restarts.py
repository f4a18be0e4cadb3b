"""Killing the operator at random points loses nothing and duplicates nothing."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest
from kubernetes import client

from studbook import GROUP, VERSION
from tests.builders import Body
from tests.manifests import example
from tests.operator_fixtures import OperatorProcess, apply, wait_for

pytestmark = pytest.mark.cluster

COUNT = 20
KILLS = 6


def _descendants(kube: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    found = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "descendants"
    )
    items: list[dict[str, Any]] = found["items"]
    return items


def test_random_kills_leave_every_descendant_finished_with_one_breed_job(
    kube: client.ApiClient, namespace: str, idle_operator: OperatorProcess
) -> None:
    rng = random.Random(20261122)
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    idle_operator.start()
    for i in range(COUNT):
        # kwok completes the breed pods without a trainer, so each attempt leaves no result; with
        # no retries allowed every Descendant must end Failed after exactly one breed Job.
        founder = (
            Body.of("founder-import")
            .set("metadata.name", f"founder-{i:02d}")
            .set("spec.resources", {"backoffLimit": 0})
        )
        apply(kube, namespace, founder.manifest)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.5, 4.0))
        idle_operator.kill()
        idle_operator.start()

    def finished() -> bool:
        phases = [(d.get("status") or {}).get("phase") for d in _descendants(kube, namespace)]
        return all(p in ("Ready", "Failed") for p in phases)

    wait_for(finished, timeout=180, what="every descendant finished", log=idle_operator.log)
    for item in _descendants(kube, namespace):
        status = item["status"]
        assert status["phase"] == "Failed", status
        assert "left no model in its output" in status["message"], status["message"]
    jobs = client.BatchV1Api(kube).list_namespaced_job(namespace).items
    per_owner = Counter(j.metadata.labels["breeding.studbook.dev/descendant"] for j in jobs)
    assert len(per_owner) == COUNT
    assert set(per_owner.values()) == {1}, per_owner
    assert all(j.metadata.labels["breeding.studbook.dev/purpose"] == "breed" for j in jobs)
