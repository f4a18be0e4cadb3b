"""Two peered replicas: only the one with the higher priority acts, the other takes over when it
stops, and a replica restarted in its pod acts again at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from studbook.controllers.peering import PAUSED, RESUMED, PeeringGate, derived_priority
from tests.builders import Body
from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import apply_peering_crds
from tests.manifests import example
from tests.operator_fixtures import OperatorProcess, apply, wait_for

pytestmark = pytest.mark.cluster

PEERING = "studbook"


@pytest.fixture
def replicas(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """Two operators peered in the namespace, sharing one store: (lower, higher) priority."""
    apply_peering_crds(kube)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", peering
    )
    store = tmp_path / "store"
    store.mkdir()
    lower, higher = (
        OperatorProcess(
            cluster,
            namespace,
            store,
            tmp_path / f"{pod}.log",
            extra_args=["--peering", PEERING],
            env={"POD_NAME": pod, "POD_ID": pod},  # as the chart sets them
        )
        for pod in sorted(["studbook-operator-a", "studbook-operator-b"], key=derived_priority)
    )
    yield lower, higher
    higher.stop()
    lower.stop()


def _founder(kube: client.ApiClient, namespace: str, name: str) -> None:
    # kwok completes the breed pod without a result; no retries keeps it at one breed Job.
    body = Body.of("founder-import").set("metadata.name", name)
    apply(kube, namespace, body.set("spec.resources", {"backoffLimit": 0}).manifest)


def _jobs(kube: client.ApiClient, namespace: str) -> list[str]:
    return sorted(
        j.metadata.name for j in client.BatchV1Api(kube).list_namespaced_job(namespace).items
    )


def _reconciled(replica: OperatorProcess) -> bool:
    return 'studbook_reconciles_total{kind="Descendant"' in replica.metrics()


def _sweeps(kube: client.ApiClient, namespace: str, replica: OperatorProcess) -> bool:
    """Whether the replica's sweeper, read from the same peering records as kopf, may act."""
    priority = derived_priority(replica.env["POD_NAME"])
    return bool(PeeringGate(kube, PEERING, priority, clusterwide=False)([namespace]))


def test_only_the_higher_priority_replica_acts_and_the_other_takes_over_when_it_stops(
    kube: client.ApiClient,
    namespace: str,
    replicas: tuple[OperatorProcess, OperatorProcess],
) -> None:
    lower, higher = replicas
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    # The lower one first: alone it acts, and it must step back when the higher one appears.
    lower.start()
    wait_for(lambda: RESUMED in lower.log.read_text(), what="lower acting alone", log=lower.log)
    higher.start()
    wait_for(lambda: PAUSED in lower.log.read_text(), what="lower paused", log=lower.log)
    wait_for(lambda: RESUMED in higher.log.read_text(), what="higher acting", log=higher.log)

    _founder(kube, namespace, "first")
    wait_for(lambda: _jobs(kube, namespace), what="a breed Job", log=higher.log)
    wait_for(lambda: _reconciled(higher), timeout=15, what="higher reconciling", log=higher.log)
    assert _jobs(kube, namespace) == ["first-breed-1"]
    assert not _reconciled(lower), "the paused replica looked at a Descendant"
    assert _sweeps(kube, namespace, higher) and not _sweeps(kube, namespace, lower)

    # SIGTERM: kopf removes the replica's peering record on its way out.
    higher.stop()
    assert higher.proc is not None and higher.proc.returncode == 0
    wait_for(
        lambda: lower.log.read_text().count(RESUMED) == 2,
        timeout=30,
        what="lower resuming",
        log=lower.log,
    )
    assert _sweeps(kube, namespace, lower)
    _founder(kube, namespace, "second")
    wait_for(
        lambda: "second-breed-1" in _jobs(kube, namespace),
        timeout=30,
        what="the second breed Job",
        log=lower.log,
    )
    # The counter moves when the handler returns, a moment after it created the Job.
    wait_for(lambda: _reconciled(lower), timeout=15, what="lower reconciling", log=lower.log)
    assert _jobs(kube, namespace) == ["first-breed-1", "second-breed-1"]

    # Killed and restarted in its pod, a replica keeps its name: its priority and, through
    # POD_ID, its peering record, so it acts again at once rather than tie with its old record.
    lower.kill()
    lower.start()
    wait_for(
        lambda: lower.log.read_text().count(RESUMED) == 3,
        timeout=30,
        what="lower resuming after its restart",
        log=lower.log,
    )
    _founder(kube, namespace, "third")
    wait_for(
        lambda: "third-breed-1" in _jobs(kube, namespace),
        timeout=30,
        what="the third breed Job",
        log=lower.log,
    )
    assert "Possibly conflicting operators" not in lower.log.read_text()
