"""The chart installed with `helm install`, its operator a container of the image `make images`
built, breeds the end-to-end population.

Nothing of the checkout runs the operator here: the local pod runner runs the Deployment's pod
as a podman container of the operator image (its ServiceAccount's token, its read-only root,
its volumes), and that operator creates Jobs whose pods run as containers of the trainer image.
What the test cluster lacks is a Service network, so the admission webhook is off (the operator
refuses at reconcile either way), and one replica runs, on the runner's node.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from studbook_trainer import __version__
from tests.cluster.controlplane import ControlPlane, free_port, helm_binary
from tests.cluster.fixtures import apply_peering_crds
from tests.cluster.images import built, image
from tests.cluster.podrunner import LABEL_POD_UID, PODMAN
from tests.e2e.family import LOCAL_NODE, NAMES, Inputs, apply_family, check_family, verify
from tests.keys import ec_key
from tests.operator_fixtures import descendant_status, provisioned, wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "studbook"
JOB_MOUNT = "/work"


@dataclass(frozen=True)
class Release:
    """An installed release: its namespace, the store's directory here, the signer's key."""

    namespace: str
    store: Path
    public_key: str


@pytest.fixture
def release(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Release]:
    """`helm install` of the chart into a namespace of its own, watching the test's namespace."""
    home = f"{namespace[:50]}-sys"
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": home}})
    apply_peering_crds(kube)
    # The signing key, in the release's namespace only.
    public_key = ec_key(tmp_path / "signing" / "key.pem")
    core.create_namespaced_secret(
        home,
        {
            "metadata": {"name": "studbook-signing"},
            "stringData": {"key.pem": (tmp_path / "signing" / "key.pem").read_text()},
        },
    )
    store = provisioned(tmp_path / "store")
    values = {
        "image": {"operator": image("operator"), "trainer": image("trainer")},
        "replicas": 1,
        "watchNamespaces": [namespace],
        "store": {
            # null drops the chart's default PersistentVolumeClaim (Helm merges maps).
            "volume": {"persistentVolumeClaim": None, "hostPath": {"path": str(store)}},
            "jobMount": JOB_MOUNT,
        },
        # Pods on the runner's node share this machine's network: ports that are free here.
        "metrics": {"port": free_port()},
        "health": {"port": free_port()},
        "webhook": {"enabled": False},
        **LOCAL_NODE,
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    helm = [str(helm_binary()), "--kubeconfig", str(cluster.kubeconfig)]
    name = f"sb-{namespace[-6:]}"
    installed = subprocess.run(
        [*helm, "install", name, str(CHART), "-n", home, "-f", str(tmp_path / "values.yaml")],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    try:
        yield Release(home, store, public_key)
    finally:
        subprocess.run([*helm, "uninstall", name, "-n", home], capture_output=True)


def _operator_container(core: client.CoreV1Api, home: str) -> dict[str, Any] | None:
    """The running operator pod's container as podman has it, once it runs."""
    pods = [p for p in core.list_namespaced_pod(home).items if p.status.phase == "Running"]
    if not pods:
        return None
    only = f"label={LABEL_POD_UID}={pods[0].metadata.uid}"
    listed = subprocess.run(
        [*PODMAN, "ps", "--format", "json", "--filter", only],
        capture_output=True,
        text=True,
        check=True,
    )
    found = yaml.safe_load(listed.stdout) or []
    return found[0] if found else None


def test_the_installed_operator_breeds_the_population_in_containers(
    kube: client.ApiClient, namespace: str, release: Release, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    operator = wait_for(
        lambda: _operator_container(core, release.namespace),
        timeout=120,
        what="the operator's container",
    )
    # The operator runs from the built image, not from this checkout.
    assert f"sha256:{operator['ImageID']}" == built("operator")["id"], operator

    # Step pods see the store's volume at the chart's jobMount.
    inputs = Inputs.in_store(release.store, JOB_MOUNT)
    apply_family(kube, namespace, release.public_key, inputs)

    def finished() -> list[dict[str, Any]] | None:
        statuses = [descendant_status(kube, namespace, n) for n in NAMES]
        done = all(s.get("phase") in ("Ready", "Failed", "Rejected") for s in statuses)
        return statuses if done else None

    statuses = wait_for(finished, timeout=1200, what="the family finished")
    check_family(statuses)
    digest = image("trainer").partition("@")[2]
    assert statuses[0]["lineage"]["codeVersion"] == f"{__version__}@{digest}"
    (tmp_path / "trusted.pem").write_text(release.public_key)
    for status in statuses:
        verify(status["artifact"]["id"], release.store, tmp_path / "trusted.pem")
