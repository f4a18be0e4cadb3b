"""The local pod runner runs pods as real containers, and enforces what a pod spec says.

These pods run on the runner's node from the images `make images` built: the step pod's
isolation below (no network, a read-only root, its volumes only) is podman's and runc's, not
a convention of the test.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from studbook.api.task import ParentArtifact
from studbook.artifacts import Lineage, Store
from studbook.artifacts.store import package_dir
from studbook.breeding.tasks import breed_task
from studbook.k8s.jobs import (
    NON_ROOT_UID,
    OUTPUT_MOUNT,
    JobSettings,
    job,
    step_network_policy,
)
from tests.builders import Body
from tests.cluster.controlplane import LOCAL_NODE, LOCAL_NODE_LABEL, LOCAL_NODE_TAINT
from tests.cluster.images import image
from tests.cluster.podrunner import LABEL_POD_UID, PODMAN
from tests.integration.test_control_plane import wait_for
from tests.operator_fixtures import provisioned

pytestmark = pytest.mark.cluster

T = TypeVar("T")
PLACEMENT: dict[str, Any] = {
    "nodeSelector": {LOCAL_NODE_LABEL[0]: LOCAL_NODE_LABEL[1]},
    "tolerations": [{**LOCAL_NODE_TAINT, "operator": "Equal"}],
}


def finished(core: client.CoreV1Api, name: str, namespace: str) -> Callable[[], Any]:
    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod_status(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    return probe


def api_address(kube: client.ApiClient) -> tuple[str, int]:
    """Where the API server listens: this machine's loopback."""
    url = urlsplit(kube.configuration.host)
    return url.hostname or "127.0.0.1", url.port or 443


def shared(path: Path) -> Path:
    """A host directory the pods' non-root user may write, as a provisioned volume is."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def pod(name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", **PLACEMENT, "containers": [container], **spec},
    }


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_pod_runs_in_a_container_of_its_image_and_reports_its_exit_code(
    kube: client.ApiClient, namespace: str, tmp_path: Path, exit_code: int
):
    core = client.CoreV1Api(kube)
    work = shared(tmp_path / "work")
    script = (
        "import os, pathlib, sys;"
        "pathlib.Path('out.txt').write_text("
        "f\"{os.environ['GREETING']} {os.getcwd()} {os.getuid()} {sys.prefix}\");"
        f"print('exiting with', {exit_code}); sys.exit({exit_code})"
    )
    body = pod(
        "local",
        {
            "name": "main",
            "image": image("trainer"),
            "command": ["python3", "-c", script],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "hello from $(POD_NAME)"},
            ],
            "workingDir": "/workspace",
            "volumeMounts": [{"name": "work", "mountPath": "/workspace"}],
        },
        volumes=[{"name": "work", "hostPath": {"path": str(work)}}],
    )
    core.create_namespaced_pod(namespace, body)

    done = wait_for("the pod to finish", finished(core, "local", namespace))
    assert done.spec.node_name == LOCAL_NODE
    assert done.status.phase == ("Succeeded" if exit_code == 0 else "Failed")
    status = done.status.container_statuses[0]
    assert status.state.terminated.exit_code == exit_code
    assert status.state.terminated.reason == ("Completed" if exit_code == 0 else "Error")
    assert status.image_id == image("trainer")
    # It ran inside the image: the mount at its own path, the image's user and Python.
    assert (work / "out.txt").read_text() == f"hello from local /workspace {NON_ROOT_UID} /usr"


def test_deleting_a_pod_stops_its_container(kube: client.ApiClient, namespace: str):
    core = client.CoreV1Api(kube)
    body = pod(
        "sleeper",
        {
            "name": "main",
            "image": image("trainer"),
            "command": ["python3", "-c", "import time; time.sleep(600)"],
        },
    )
    created = core.create_namespaced_pod(namespace, body)
    uid = created.metadata.uid

    def containers() -> list[str]:
        listed = subprocess.run(
            [
                *PODMAN,
                "ps",
                "--all",
                "--format",
                "{{.Names}}",
                "--filter",
                f"label={LABEL_POD_UID}={uid}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return listed.stdout.split()

    wait_for("the container to start", containers)
    core.delete_namespaced_pod("sleeper", namespace)

    def pod_gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the runner to finish the pod's deletion", pod_gone, timeout=30)
    wait_for("the container to be removed", lambda: not containers(), timeout=15)


def test_a_pod_whose_image_is_not_here_waits_in_image_pull_back_off(
    kube: client.ApiClient, namespace: str
):
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        pod("missing", {"name": "main", "image": "registry.invalid/nothing:1", "command": ["x"]}),
    )

    def waiting() -> Any:
        statuses = core.read_namespaced_pod_status("missing", namespace).status.container_statuses
        state = statuses[0].state.waiting if statuses else None
        return state if state is not None and state.reason == "ImagePullBackOff" else None

    state = wait_for("the pod to report its missing image", waiting)
    assert "registry.invalid/nothing:1" in state.message
    assert core.read_namespaced_pod_status("missing", namespace).status.phase == "Pending"


# A malicious step: run in place of the trainer, it tries to reach the network and to read or
# write each thing in the store it should not. Arguments: the API server's host and port, where
# to write its report, then "read:PATH", "write:PATH" or "list:PATH" for each attempt.
PROBE = """
import json, os, socket, sys
host, port, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
found = {}
try:
    socket.create_connection((host, port), timeout=3).close()
    found["network"] = "reached " + host
except OSError as exc:
    found["network"] = type(exc).__name__
for attempt in sys.argv[4:]:
    action, _, path = attempt.partition(":")
    try:
        if action == "list":
            found[attempt] = sorted(os.listdir(path))
            continue
        if action == "write":
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w" if action == "write" else "r") as handle:
            handle.write("forged") if action == "write" else handle.read(1)
        found[attempt] = "done"
    except OSError as exc:
        found[attempt] = type(exc).__name__
found["uid"] = os.getuid()
os.makedirs(os.path.dirname(report), exist_ok=True)
with open(report, "w") as out:
    json.dump(found, out)
"""


def _package(store: Store, tmp_path: Path, name: str) -> str:
    model = tmp_path / "models" / name
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(name.encode() * 64)
    (model / "config.json").write_text('{"architectures": ["BertModel"]}')
    lineage = Lineage(operator="import", config_hash="sha256:" + "0" * 64, code_version="0.1.0")
    return store.seal(model, lineage).id


def test_a_malicious_step_can_write_only_its_own_output(
    kube: client.ApiClient, namespace: str, tmp_path: Path
):
    """The breed Job the operator builds, its policy applied: only the command is the attacker's.

    The store holds the step's parent and data, and also another descendant's package, another
    tenant's data, another Job's output and the pipeline's records. The step reads its own inputs
    and writes its own output, and nothing else, whatever it tries.
    """
    root = provisioned(tmp_path / "store")
    store = Store.open(root)
    parent, other = _package(store, tmp_path, "parent"), _package(store, tmp_path, "other")
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "train.jsonl").write_text('{"text": "ours", "label": 0}\n')
    (inputs / "theirs.jsonl").write_text('{"text": "theirs", "label": 1}\n')
    elsewhere = root / "outputs" / "3f9a0c52-another-job"
    elsewhere.mkdir(parents=True)
    (elsewhere / "scorecard.json").write_text("{}")
    records = root / "runs" / namespace
    records.mkdir(parents=True)
    settings = JobSettings(
        trainer_image=image("trainer"),
        artifact_volume={"hostPath": {"path": str(root)}},
        store_mount="/store",
    )
    owner = (
        Body.of("lora-specialist")
        .set("metadata.namespace", namespace)
        .set("metadata.uid", "00000000-0000-0000-0000-000000000001")
        .set("spec.data.0.uri", "/store/inputs/train.jsonl")
        .set("spec.resources", {**PLACEMENT})
        .descendant()
    )
    parents = [ParentArtifact(name="minilm-base", artifact_id=parent, uri="/store")]
    task = breed_task(owner, parents, "/store", OUTPUT_MOUNT)
    body = job(owner, "breed", 1, settings, task, 600)
    body["metadata"].pop("ownerReferences")
    container = body["spec"]["template"]["spec"]["containers"][0]
    host, port = api_address(kube)
    ours, theirs = f"/store/{package_dir(parent)}", f"/store/{package_dir(other)}"
    attempts = [
        "write:/probe.txt",
        "write:/etc/probe.txt",
        "write:/opt/studbook/lib/probe.txt",
        "write:/tmp/probe.txt",
        f"read:{ours}/manifest.json",
        "read:/store/inputs/train.jsonl",
        "list:/store",
        "list:/store/sha256",
        f"read:{theirs}/manifest.json",
        "read:/store/inputs/theirs.jsonl",
        f"write:{ours}/files/model.safetensors",
        f"write:{ours}/signatures/forged.sigstore.json",
        "write:/store/inputs/train.jsonl",
        f"write:/store/{package_dir('sha256:' + 'ab' * 32)}/manifest.json",
        f"write:/store/outputs/{elsewhere.name}/scorecard.json",
        f"write:/store/runs/{namespace}/d/00000000/sign-1.json",
        "write:/output/model/model.safetensors",
    ]
    container["command"] = ["python3", "-c", PROBE, host, str(port), "/output/report.json"]
    container["args"] = attempts
    network = client.NetworkingV1Api(kube)
    network.create_namespaced_network_policy(namespace, step_network_policy(namespace, settings))
    batch = client.BatchV1Api(kube)
    uid = batch.create_namespaced_job(namespace, body).metadata.uid
    report = root / "outputs" / uid / "report.json"

    assert wait_for("the probe's report", report.exists, timeout=90)
    found = json.loads(report.read_text())
    # The API server listens on this machine's loopback, which a host-network pod reaches (the
    # test below); this pod's loopback is its own, and it has no other interface.
    assert found["network"] in ("ConnectionRefusedError", "OSError"), found
    assert found["uid"] == NON_ROOT_UID
    done = {a for a in attempts if found[a] == "done"}
    assert done == {
        "write:/tmp/probe.txt",
        f"read:{ours}/manifest.json",
        "read:/store/inputs/train.jsonl",
        "write:/output/model/model.safetensors",
    }, found
    # Of the store it sees its inputs only: no other package, data, output or record.
    assert found["list:/store"] == ["inputs", "sha256"]
    assert found["list:/store/sha256"] == [package_dir(parent).split("/")[1]]
    for attempt in set(attempts) - done - {"list:/store", "list:/store/sha256"}:
        assert found[attempt] in ("OSError", "FileNotFoundError", "PermissionError"), attempt
    # Everything it tried to forge is as it was; what it wrote is under outputs/<its Job's uid>.
    for artifact in (parent, other):
        store.fetch(artifact, tmp_path / "verified" / artifact[7:19])
        assert store.signatures(artifact) == []
    assert (inputs / "train.jsonl").read_text() == '{"text": "ours", "label": 0}\n'
    assert (elsewhere / "scorecard.json").read_text() == "{}"
    assert sorted(p.name for p in (root / "outputs").iterdir()) == sorted([uid, elsewhere.name])
    assert (root / "outputs" / uid / "model" / "model.safetensors").read_text() == "forged"
    assert list(records.iterdir()) == []
    assert store.ids() == sorted([parent, other])


def test_a_pod_outside_any_policy_reaches_the_api_server(
    kube: client.ApiClient, namespace: str, tmp_path: Path
):
    """The other half of the probe above: the same image and probe, reaching the network."""
    store = shared(tmp_path / "store")
    host, port = api_address(kube)
    core = client.CoreV1Api(kube)
    body = pod(
        "reaches",
        {
            "name": "main",
            "image": image("trainer"),
            "command": ["python3", "-c", PROBE, host, str(port), "/store/probe.json"],
            "volumeMounts": [{"name": "store", "mountPath": "/store"}],
        },
        volumes=[{"name": "store", "hostPath": {"path": str(store)}}],
    )
    core.create_namespaced_pod(namespace, body)
    wait_for("the pod to finish", finished(core, "reaches", namespace))
    found = json.loads((store / "probe.json").read_text())
    assert found["network"] == f"reached {host}"
