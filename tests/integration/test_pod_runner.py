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

from studbook.k8s.jobs import NON_ROOT_UID, JobSettings, job, step_network_policy
from tests.builders import Body
from tests.cluster.controlplane import LOCAL_NODE, LOCAL_NODE_LABEL, LOCAL_NODE_TAINT
from tests.cluster.images import image
from tests.cluster.podrunner import LABEL_POD_UID, PODMAN
from tests.integration.test_control_plane import wait_for

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


# The probe a breed pod runs in place of the trainer: what can it reach and write?
PROBE = """
import json, os, socket, sys
host, port, store = sys.argv[1], int(sys.argv[2]), sys.argv[3]
found = {}
try:
    socket.create_connection((host, port), timeout=3).close()
    found["network"] = "reached " + host
except OSError as exc:
    found["network"] = type(exc).__name__
for target in ("/probe.txt", "/etc/probe.txt", "/opt/studbook/lib/probe.txt", "/tmp/probe.txt",
               store + "/probe.txt"):
    try:
        with open(target, "w") as handle:
            handle.write("x")
        found[target] = "written"
    except OSError as exc:
        found[target] = type(exc).__name__
found["uid"] = os.getuid()
with open(store + "/probe.json", "w") as out:
    json.dump(found, out)
"""


def test_a_breed_pod_cannot_reach_the_network_or_write_outside_its_volumes(
    kube: client.ApiClient, namespace: str, tmp_path: Path
):
    """The Job the operator builds, its policy applied: only the command is the probe's."""
    store = shared(tmp_path / "store")
    settings = JobSettings(
        trainer_image=image("trainer"),
        artifact_volume={"hostPath": {"path": str(store)}},
        store_mount="/store",
    )
    owner = (
        Body.of("founder-import")
        .set("metadata.namespace", namespace)
        .set("metadata.uid", "00000000-0000-0000-0000-000000000001")
        .set("spec.resources", {**PLACEMENT})
        .descendant()
    )
    body = job(owner, "breed", 1, settings, "{}", 600)
    body["metadata"].pop("ownerReferences")
    container = body["spec"]["template"]["spec"]["containers"][0]
    host, port = api_address(kube)
    container["command"] = ["python3", "-c", PROBE, host, str(port), "/store"]
    container["args"] = []
    network = client.NetworkingV1Api(kube)
    network.create_namespaced_network_policy(namespace, step_network_policy(namespace, settings))
    batch = client.BatchV1Api(kube)
    batch.create_namespaced_job(namespace, body)

    result = wait_for("the probe's report", lambda: (store / "probe.json").exists(), timeout=90)
    assert result
    found = json.loads((store / "probe.json").read_text())
    # The API server listens on this machine's loopback, which a host-network pod reaches (the
    # test below); this pod's loopback is its own, and it has no other interface.
    assert found["network"] in ("ConnectionRefusedError", "OSError"), found
    assert found["uid"] == NON_ROOT_UID
    for target in ("/probe.txt", "/etc/probe.txt", "/opt/studbook/lib/probe.txt"):
        assert found[target] == "OSError", (target, found)
    assert found["/tmp/probe.txt"] == "written"
    assert found["/store/probe.txt"] == "written"


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
            "command": ["python3", "-c", PROBE, host, str(port), "/store"],
            "volumeMounts": [{"name": "store", "mountPath": "/store"}],
        },
        volumes=[{"name": "store", "hostPath": {"path": str(store)}}],
    )
    core.create_namespaced_pod(namespace, body)
    wait_for("the pod to finish", finished(core, "reaches", namespace))
    found = json.loads((store / "probe.json").read_text())
    assert found["network"] == f"reached {host}"
