"""pytest plugin: the operator as a real process against the session's control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from studbook import GROUP, VERSION
from studbook.artifacts import KeySigner, Lineage, Store
from studbook.controllers.webhook import CONFIGURATION
from studbook.k8s.jobs import NON_ROOT_UID
from tests.builders import Body
from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.images import image
from tests.keys import ec_key

REPO = Path(__file__).resolve().parents[1]


class OperatorProcess:
    """``studbook operator`` watching one namespace (all if ``namespace`` is empty); restartable,
    its log kept for failures."""

    def __init__(
        self,
        cluster: ControlPlane,
        namespace: str,
        store: Path,
        log: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.store = store
        self.log = log
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "STUDBOOK_STORE": str(store),
            # Step pods mount the store at the path the operator sees it at.
            "STUDBOOK_JOB_STORE": str(store),
            "STUDBOOK_STORE_VOLUME": json.dumps({"hostPath": {"path": str(store)}}),
            "STUDBOOK_TRAINER_IMAGE": image("trainer"),
            **(env or {}),
        }

    def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "studbook",
                "operator",
                *(["-n", self.namespace] if self.namespace else []),
                "--metrics-port",
                str(self.metrics_port),
                *self.extra_args,
            ],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def metrics(self) -> str:
        """The operator's Prometheus exposition."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as page:
            text: str = page.read().decode()
        return text

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def provisioned(store: Path) -> Path:
    """A new store directory as a provisioned volume is to the step pods' user.

    Owned by it, and group-writable with the set-group-id bit, as the kubelet leaves a volume for
    a pod's fsGroup: the directories it makes for subPaths take the group, so a pod can write its
    own output directory there.
    """
    store.mkdir()
    os.chown(store, NON_ROOT_UID, NON_ROOT_UID)
    store.chmod(0o2775)
    return store


@pytest.fixture
def idle_operator(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator for the test's namespace and a fresh artifact store, not started yet."""
    store = provisioned(tmp_path / "store")
    process = OperatorProcess(cluster, namespace, store, tmp_path / "operator.log")
    yield process
    process.stop()


@pytest.fixture
def operator(idle_operator: OperatorProcess) -> OperatorProcess:
    """A running operator for the test's namespace."""
    idle_operator.start()
    return idle_operator


def apply(kube: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create a Studbook resource in the namespace."""
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    plural = {
        "BreedingPolicy": "breedingpolicies",
        "EvaluationSuite": "evaluationsuites",
        "Descendant": "descendants",
        "BreedingRun": "breedingruns",
        "Promotion": "promotions",
    }[manifest["kind"]]
    created: dict[str, Any] = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )
    return created


def read_resource(kube: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    """A Studbook resource as the API server has it."""
    found: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return found


def descendant_status(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """A Descendant's status as the API server has it (empty before the operator wrote one)."""
    status: dict[str, Any] = read_resource(kube, namespace, "descendants", name).get("status") or {}
    return status


def wait_for(
    probe: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "condition",
    log: Path | None = None,
) -> Any:
    """Poll until ``probe`` returns something truthy; fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}\n{tail}")


def webhook_configured(kube: client.ApiClient) -> bool:
    """Whether kopf has registered the operator's validating webhook."""
    return any(
        c.metadata.name == CONFIGURATION and c.webhooks
        for c in client.AdmissionregistrationV1Api(kube)
        .list_validating_webhook_configuration()
        .items
    )


def signing_key(tmp_path: Path) -> tuple[KeySigner, str]:
    """A fresh EC key at ``tmp_path/signer.pem``: its signer and its public key (PEM)."""
    public = ec_key(tmp_path / "signer.pem")
    return KeySigner(tmp_path / "signer.pem"), public


def seal_model(store: Store, tmp_path: Path, name: str) -> str:
    """A small stand-in model, sealed into ``store`` as a founder; its artifact id."""
    model = tmp_path / "models" / name
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(name.encode() * 512)
    (model / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    lineage = Lineage(
        operator="import",
        config_hash="sha256:" + "0" * 64,
        code_version="0.1.0",
    )
    return store.seal(model, lineage).id


def ready_parent(
    kube: client.ApiClient, namespace: str, name: str, artifact: str, store: Store, **spec: Any
) -> None:
    """A founder Descendant marked Ready with ``artifact``, as the operator marks one."""
    body = Body.of("founder-import").set("metadata.name", name)
    for path, value in spec.items():
        body.set(path, value)
    created = apply(kube, namespace, body.manifest)
    status = {
        "phase": "Ready",
        "stage": "candidate",
        "observedGeneration": created["metadata"]["generation"],
        "artifact": {
            "id": artifact,
            "shortId": artifact[7:19],
            "uri": store.package_path(artifact),
            "sizeBytes": 1,
            "signer": "test-key",
        },
    }
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "descendants", name, {"status": status}
    )
