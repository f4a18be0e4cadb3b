"""The chart installed with `helm install`, its operator a container of the image `make images`
built, breeds the end-to-end population.

Nothing of the checkout runs the operator here: the local pod runner runs the Deployment's pod
as a podman container of the operator image (its ServiceAccount's token, its read-only root,
its volumes), and that operator creates Jobs whose pods run as containers of the trainer image.
What the test cluster lacks is a Service network, so the admission webhook is off (the operator
refuses at reconcile either way), and one replica runs, on the runner's node.

The operator signs keyless, as the chart sets it up: its pod's projected service-account token,
issued by the test API server, is certified by the offline sigstore stand-in (Fulcio, CT log and
Rekor from npm's @sigstore/mock, on loopback), which trusts that API server's issuer and keys. No
signing key exists anywhere; the policy trusts the operator's service account by name.
"""

from __future__ import annotations

import json
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
from tests.operator_fixtures import descendant_status, provisioned, wait_for
from tests.sigstore.stand_in import SigstoreStandIn

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "studbook"
JOB_MOUNT = "/work"


@dataclass(frozen=True)
class Release:
    """An installed release: its namespace, the store's directory here, how its signer is
    trusted (a policy's trusted signer and `studbook verify`'s options) and named."""

    namespace: str
    store: Path
    signer: dict[str, Any]
    verify_options: tuple[str, ...]
    identity: str


def _service_account_issuer(kube: client.ApiClient) -> tuple[str, dict[str, Any]]:
    """The API server's service-account issuer and the keys it signs tokens with."""
    # Raw bodies: the generated client parses these as str and hands back a repr.
    known = client.WellKnownApi(kube)
    discovery = known.get_service_account_issuer_open_id_configuration(_preload_content=False)
    keys = client.OpenidApi(kube).get_service_account_issuer_open_id_keyset(_preload_content=False)
    return json.loads(discovery.data)["issuer"], json.loads(keys.data)


@pytest.fixture
def release(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Release]:
    """`helm install` of the chart into a namespace of its own, watching the test's namespace,
    signing keyless."""
    home = f"{namespace[:50]}-sys"
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": home}})
    apply_peering_crds(kube)
    issuer, jwks = _service_account_issuer(kube)
    (tmp_path / "sigstore").mkdir()
    with SigstoreStandIn(tmp_path / "sigstore", issuer=issuer, jwks=jwks) as sigstore:
        trust_config = sigstore.trust_config.read_text()
        # The operator's trust configuration in its namespace; the policy's in the tenant's.
        for where in (home, namespace):
            core.create_namespaced_config_map(
                where,
                {
                    "metadata": {"name": "studbook-sigstore"},
                    "data": {"trust_config.json": trust_config},
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
            "signing": {"mode": "keyless"},
            # Pods on the runner's node share this machine's network: ports that are free here.
            "metrics": {"port": free_port()},
            "health": {"port": free_port()},
            "webhook": {"enabled": False},
            **LOCAL_NODE,
        }
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        (tmp_path / "trust_config.json").write_text(trust_config)
        helm = [str(helm_binary()), "--kubeconfig", str(cluster.kubeconfig)]
        name = f"sb-{namespace[-6:]}"
        installed = subprocess.run(
            [*helm, "install", name, str(CHART), "-n", home, "-f", str(tmp_path / "values.yaml")],
            capture_output=True,
            text=True,
        )
        assert installed.returncode == 0, installed.stderr
        (deployment,) = client.AppsV1Api(kube).list_namespaced_deployment(home).items
        account = deployment.spec.template.spec.service_account_name
        identity = f"https://kubernetes.io/namespaces/{home}/serviceaccounts/{account}"
        signer = {
            "name": "studbook-operator",
            "kind": "keyless",
            "keyless": {
                "identity": identity,
                "issuer": issuer,
                "trustConfigMap": "studbook-sigstore",
            },
        }
        options = (
            *("--identity", identity),
            *("--oidc-issuer", issuer),
            *("--trust-config", str(tmp_path / "trust_config.json")),
        )
        try:
            yield Release(home, store, signer, options, identity)
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
    apply_family(kube, namespace, release.signer, inputs)

    def finished() -> list[dict[str, Any]] | None:
        statuses = [descendant_status(kube, namespace, n) for n in NAMES]
        done = all(s.get("phase") in ("Ready", "Failed", "Rejected") for s in statuses)
        return statuses if done else None

    statuses = wait_for(finished, timeout=1200, what="the family finished")
    # Signed by the operator's own service account, as Fulcio certified it; the children were
    # admitted because their parents' keyless signatures verified under the policy.
    check_family(statuses, signer=release.identity)
    digest = image("trainer").partition("@")[2]
    assert statuses[0]["lineage"]["codeVersion"] == f"{__version__}@{digest}"
    for status in statuses:
        verify(status["artifact"]["id"], release.store, *release.verify_options, "--scorecards")
