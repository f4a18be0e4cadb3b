"""A test device that plays kubelet for one node: its pods run as real containers.

Each container runs with podman (runc, cgroupfs: see ../shared notes on containers) from an image
in this machine's podman store; nothing is ever pulled, so a missing image leaves the pod waiting
in ImagePullBackOff (ErrImageNeverPull under `imagePullPolicy: Never`) until it is built. What is
honoured:

- image, command and args (as a kubelet: `command` replaces the entrypoint, `args` the image's
  CMD, with `$(VAR)` expansion), env (values, fieldRef, configMapKeyRef, secretKeyRef), envFrom,
  workingDir;
- the security context: runAsUser/runAsGroup, runAsNonRoot (refused as the kubelet does when
  the user would be root), fsGroup as a supplementary group, readOnlyRootFilesystem (no
  writable tmpfs is added), capabilities, allowPrivilegeEscalation (no-new-privileges);
- resource limits: memory (an OOM kill is reported as OOMKilled) and CPU, clamped to this node;
- volumes: emptyDir and hostPath bind-mounted, configMap, secret, downwardAPI and projected
  sources (service account tokens included) written out as files and mounted read-only, subPath,
  readOnly mounts; the termination message file;
- NetworkPolicy egress: a pod selected by a policy that allows no egress at all runs with no
  network (`--network none`); every other pod shares the node's network, where the API server
  is reachable at KUBERNETES_SERVICE_HOST/PORT. Partial egress rules are not enforced;
- init containers in order, then the containers concurrently; the pod succeeds when all exit 0.

Status goes back to the API like a kubelet writes it: phase, conditions, podIP/hostIP and
containerStatuses with waiting, running and terminated states (exitCode, reason, message,
timestamps, imageID). Restart policies are treated as Never; a deleted pod's containers are
stopped and the pod is finalized. Per-container output is in
<root>/logs/<namespace>_<pod>_<container>.log.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import _die_with_parent

log = logging.getLogger("podrunner")

LOCAL_IP = "127.0.0.1"
PODMAN = ("podman", "--runtime", shutil.which("runc") or "runc", "--cgroup-manager", "cgroupfs")
"""podman as these machines need it: crun cannot run under the hybrid cgroup layout, runc can."""
# Without explicit limits runc cannot set them here; these stay under this machine's hard limits.
ULIMITS = ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=8192:8192")
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_RUNNER = "dev.studbook.podrunner.root"
"""Marks the containers of one runner, so a stopping runner removes every one of them."""
IMAGE_RECHECK_SECONDS = 5.0
KILL_GRACE_SECONDS = 5
"""Between SIGTERM and SIGKILL when a pod is deleted."""
HEARTBEAT_SECONDS = 10.0
MERGE_PATCH = "application/merge-patch+json"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` like the kubelet: unknown references stay as written, `$$` escapes."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(repl, text)


@dataclass
class _PodRun:
    """Bookkeeping for one pod while its processes run."""

    namespace: str
    name: str
    uid: str
    deleting: threading.Event = field(default_factory=threading.Event)
    containers: set[str] = field(default_factory=set)
    """podman names of the containers running now."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class PodRunner:
    """Registers the node, keeps it alive, and runs every pod bound to it."""

    def __init__(self, api: client.ApiClient, node: str, root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.networking = client.NetworkingV1Api(api)
        server = urlsplit(api.configuration.host)
        self.api_host, self.api_port = server.hostname or LOCAL_IP, str(server.port or 443)
        self.coordination = client.CoordinationV1Api(api)
        self.node = node
        self.root = root
        self.runs: dict[str, _PodRun] = {}
        self.stopping = threading.Event()

    # -- node -------------------------------------------------------------------------------

    def register_node(self) -> None:
        """Create the node (tainted, so only opting-in pods land here) and mark it Ready."""
        from tests.cluster.controlplane import LOCAL_NODE_LABEL, LOCAL_NODE_TAINT

        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{_memory_kib()}Ki",
            "pods": "110",
            # The trainer falls back to CPU; advertising one GPU lets GPU-requesting Jobs that
            # opt in to this node run for real.
            "nvidia.com/gpu": "1",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    LOCAL_NODE_LABEL[0]: LOCAL_NODE_LABEL[1],
                },
            },
            "spec": {"taints": [LOCAL_NODE_TAINT]},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._report_node_status()

    def _report_node_status(self) -> None:
        now = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "LocalPodRunnerReady",
            "message": "studbook local pod runner is running",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        self.core.patch_node_status(
            self.node,
            {
                "status": {
                    "conditions": [ready],
                    "addresses": [
                        {"type": "InternalIP", "address": LOCAL_IP},
                        {"type": "Hostname", "address": self.node},
                    ],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "operatingSystem": "linux",
                        "kubeletVersion": "studbook-podrunner",
                        "containerRuntimeVersion": "local-process://",
                        "kernelVersion": os.uname().release,
                        "osImage": "local",
                        "bootID": "",
                        "machineID": "",
                        "systemUUID": "",
                        "kubeProxyVersion": "",
                    },
                }
            },
            _content_type="application/strategic-merge-patch+json",
        )

    def heartbeat_forever(self) -> None:
        """Renew the node lease so the node lifecycle controller keeps the node Ready."""
        namespace = "kube-node-lease"
        last_status = 0.0
        while not self.stopping.is_set():
            try:
                spec = {
                    "holderIdentity": self.node,
                    "leaseDurationSeconds": 40,
                    "renewTime": datetime.datetime.now(datetime.UTC).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ"
                    ),
                }
                try:
                    self.coordination.patch_namespaced_lease(
                        self.node, namespace, {"spec": spec}, _content_type=MERGE_PATCH
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    self.coordination.create_namespaced_lease(
                        namespace,
                        {"metadata": {"name": self.node, "namespace": namespace}, "spec": spec},
                    )
                if time.monotonic() - last_status > 60:
                    self._report_node_status()
                    last_status = time.monotonic()
            except Exception:  # a missed beat is retried; the grace period is 40 s
                log.exception("heartbeat failed")
            self.stopping.wait(HEARTBEAT_SECONDS)

    # -- pods -------------------------------------------------------------------------------

    def watch_forever(self) -> None:
        """List and watch the node's pods; start new ones, kill and finalize deleted ones."""
        selector = f"spec.nodeName={self.node}"
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listing.items:
                    self._on_pod(pod, initial=True)
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=300,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(event["object"], initial=False)
                    elif event["type"] == "DELETED":
                        run = self.runs.get(event["object"].metadata.uid)
                        if run is not None:
                            run.deleting.set()
                            self._kill(run)
            except ApiException as exc:
                if exc.status != 410:  # 410: the watch expired; relist
                    log.exception("watch failed")
                    time.sleep(1)
            except Exception:
                log.exception("watch failed")
                time.sleep(1)

    def _on_pod(self, pod: client.V1Pod, *, initial: bool) -> None:
        uid = pod.metadata.uid
        run = self.runs.get(uid)
        if pod.metadata.deletion_timestamp is not None:
            if run is None:
                self._finalize(pod.metadata.namespace, pod.metadata.name, uid)
            else:
                run.deleting.set()
                self._kill(run)
            return
        if run is not None or pod.status.phase in ("Succeeded", "Failed"):
            return
        if initial and pod.status.phase == "Running":
            # Its processes belonged to a previous runner; a kubelet restart would also lose them.
            self._patch_status(pod, self._final_status(pod, {}, "RunnerRestarted"))
            return
        run = _PodRun(pod.metadata.namespace, pod.metadata.name, uid)
        self.runs[uid] = run
        log.info("starting pod %s/%s", run.namespace, run.name)
        threading.Thread(target=self._run_pod, args=(pod, run), daemon=True).start()

    def _run_pod(self, pod: client.V1Pod, run: _PodRun) -> None:
        started = _now()
        pod_dir = self.root / "pods" / f"{run.namespace}_{run.name}_{run.uid[:8]}"
        exit_codes: dict[str, _Exit] = {}
        try:
            self._wait_for_images(pod, run)
            if run.deleting.is_set():
                self._finalize(run.namespace, run.name, run.uid)
                self.runs.pop(run.uid, None)
                return
            volumes = self._prepare_volumes(pod, pod_dir)
            network = self._network(pod)
            self._patch_status(pod, self._running_status(pod, started, init=True))
            for container in pod.spec.init_containers or []:
                code = self._run_container(pod, run, container, volumes, pod_dir, network)
                exit_codes[container.name] = code
                if code.code != 0 or run.deleting.is_set():
                    break
            else:
                self._patch_status(pod, self._running_status(pod, started, init=False))
                exit_codes.update(self._run_all(pod, run, volumes, pod_dir, network))
            reason = ""
        except Exception as exc:
            log.exception("pod %s/%s could not run", run.namespace, run.name)
            reason = f"RunnerError: {exc}"
        log.info(
            "pod %s/%s finished: %s%s",
            run.namespace,
            run.name,
            {name: code.code for name, code in exit_codes.items()},
            " (deleted)" if run.deleting.is_set() else "",
        )
        if run.deleting.is_set():
            self._finalize(run.namespace, run.name, run.uid)
        else:
            self._patch_status(pod, self._final_status(pod, exit_codes, reason, started))
        self.runs.pop(run.uid, None)

    def _run_all(
        self,
        pod: client.V1Pod,
        run: _PodRun,
        volumes: Mapping[str, _Volume],
        pod_dir: Path,
        network: str,
    ) -> dict[str, _Exit]:
        """Run the pod's containers side by side, as a kubelet does."""
        results: dict[str, _Exit] = {}

        def run_one(c: client.V1Container) -> None:
            results[c.name] = self._run_container(pod, run, c, volumes, pod_dir, network)

        threads = [threading.Thread(target=run_one, args=(c,)) for c in pod.spec.containers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    # -- images -----------------------------------------------------------------------------

    @staticmethod
    def _image(ref: str) -> dict[str, Any] | None:
        """The local image a reference names, or None: this node never pulls."""
        found = subprocess.run(
            [*PODMAN, "image", "inspect", "--format", "json", ref],
            capture_output=True,
            check=False,
        )
        if found.returncode != 0:
            return None
        info: dict[str, Any] = json.loads(found.stdout)[0]
        return info

    def _wait_for_images(self, pod: client.V1Pod, run: _PodRun) -> None:
        """Hold the pod in ImagePullBackOff while an image is missing, as a kubelet retries."""
        containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
        reported = ""
        while not run.deleting.is_set():
            missing = [c for c in containers if self._image(c.image) is None]
            if not missing:
                return
            first = missing[0]
            reason = (
                "ErrImageNeverPull" if first.image_pull_policy == "Never" else "ImagePullBackOff"
            )
            message = (
                f'Back-off pulling image "{first.image}": this node never pulls, and the image '
                "is not in its store (build it with make images)"
            )
            if message != reported:
                log.info("pod %s/%s waits for image %s", run.namespace, run.name, first.image)
                self._patch_status(pod, self._waiting_status(pod, reason, message))
                reported = message
            run.deleting.wait(IMAGE_RECHECK_SECONDS)

    # -- containers -------------------------------------------------------------------------

    def _run_container(
        self,
        pod: client.V1Pod,
        run: _PodRun,
        container: client.V1Container,
        volumes: Mapping[str, _Volume],
        pod_dir: Path,
        network: str,
    ) -> _Exit:
        """Run one container to completion with podman."""
        started = _now()
        image = self._image(container.image)
        if image is None:
            return _Exit(1, started, _now(), f"image {container.image} is gone", "ErrImagePull")
        env = self._container_env(pod, container)
        try:
            security = _security_args(pod, container, image)
            mounts = _mount_args(container, volumes, env)
            limits = _limit_args(container)
        except _ConfigError as exc:
            return _Exit(1, started, _now(), str(exc), "CreateContainerConfigError")
        name = f"k8s_{container.name}_{run.name}_{run.namespace}_{run.uid[:8]}"
        termination = pod_dir / "termination" / container.name
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_bytes(b"")
        termination.chmod(0o666)
        argv = [
            *PODMAN,
            "run",
            "--name",
            name,
            "--pull",
            "never",
            "--label",
            f"{LABEL_RUNNER}={self.root}",
            "--label",
            f"{LABEL_POD_UID}={run.uid}",
            "--label",
            f"io.kubernetes.pod.namespace={run.namespace}",
            "--label",
            f"io.kubernetes.pod.name={run.name}",
            "--label",
            f"io.kubernetes.container.name={container.name}",
            *ULIMITS,
            *security,
            *limits,
            "--network",
            network,
            "--hostname",
            run.name[:63],
        ]
        if network == "host" and pod.spec.automount_service_account_token is not False:
            env.setdefault("KUBERNETES_SERVICE_HOST", self.api_host)
            env.setdefault("KUBERNETES_SERVICE_PORT", self.api_port)
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        path = container.termination_message_path or "/dev/termination-log"
        mounts += ["--mount", f"type=bind,src={termination},dst={path}"]
        argv += mounts
        if container.working_dir:
            argv += ["--workdir", container.working_dir]
        command = [expand(a, env) for a in container.command or []]
        args = [expand(a, env) for a in container.args or []]
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        argv.append(image["Id"])
        argv += args
        log_path = self.root / "logs" / f"{run.namespace}_{run.name}_{container.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            with run.lock:
                if run.deleting.is_set():
                    return _Exit(137, started, _now(), "deleted before it started", "Error")
                run.containers.add(name)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # A killed runner takes its pods with it, as a stopped node would: podman
                    # passes the SIGTERM on to the container.
                    preexec_fn=_die_with_parent,
                )
                code = proc.wait()
            finally:
                with run.lock:
                    run.containers.discard(name)
        state = _inspect_and_remove(name)
        tail = log_path.read_bytes()[-2048:].decode(errors="replace")
        message = termination.read_text(errors="replace").strip()[:4096]
        if (
            not message
            and code != 0
            and container.termination_message_policy == ("FallbackToLogsOnError")
        ):
            message = "\n".join(tail.splitlines()[-80:])
        if code == 125 or state is None:  # podman itself failed: the container never ran
            return _Exit(code, started, _now(), tail.strip(), "CreateContainerError")
        reason = "OOMKilled" if state.get("OOMKilled") else "Completed" if code == 0 else "Error"
        image_id = f"{container.image.split('@')[0]}@{image.get('Digest', '')}"
        return _Exit(code, started, _now(), message, reason, image_id)

    def _kill(self, run: _PodRun) -> None:
        with run.lock:
            names = list(run.containers)
        for name in names:
            # SIGTERM, then SIGKILL after the grace period, as a kubelet stops a container.
            subprocess.Popen(
                [*PODMAN, "stop", "--time", str(KILL_GRACE_SECONDS), name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _network(self, pod: client.V1Pod) -> str:
        """`none` when a NetworkPolicy selecting the pod allows it no egress, else `host`."""
        policies = self.networking.list_namespaced_network_policy(pod.metadata.namespace).items
        labels = pod.metadata.labels or {}
        selecting = [
            p
            for p in policies
            if "Egress" in (p.spec.policy_types or []) and _selects(p.spec.pod_selector, labels)
        ]
        if selecting and not any(p.spec.egress for p in selecting):
            return "none"
        return "host"

    def _finalize(self, namespace: str, name: str, uid: str) -> None:
        # Like the kubelet: once nothing runs, the graceful deletion is completed. The grace
        # period goes in the body: with a body, the apiserver ignores the query parameters.
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.exception("finalizing %s/%s", namespace, name)

    # -- volumes and env --------------------------------------------------------------------

    def _prepare_volumes(self, pod: client.V1Pod, pod_dir: Path) -> dict[str, _Volume]:
        result: dict[str, _Volume] = {}
        for volume in pod.spec.volumes or []:
            local = pod_dir / "volumes" / volume.name
            # Like a kubelet's: files the runner writes (configMap, secret, tokens, downward API)
            # are mounted read-only; emptyDir is writable by any user, as on a node.
            written = True
            if volume.host_path is not None:
                local = Path(volume.host_path.path)
                if volume.host_path.type in ("DirectoryOrCreate", None, ""):
                    local.mkdir(parents=True, exist_ok=True)
                written = False
            elif volume.empty_dir is not None:
                local.mkdir(parents=True, exist_ok=True)
                local.chmod(0o777)
                written = False
            elif volume.config_map is not None:
                self._write_config_map(pod, volume.config_map.name, volume.config_map.items, local)
            elif volume.secret is not None:
                self._write_secret(pod, volume.secret.secret_name, volume.secret.items, local)
            elif volume.projected is not None:
                for source in volume.projected.sources or []:
                    if source.config_map is not None:
                        self._write_config_map(
                            pod, source.config_map.name, source.config_map.items, local
                        )
                    elif source.secret is not None:
                        self._write_secret(pod, source.secret.name, source.secret.items, local)
                    elif source.service_account_token is not None:
                        self._write_token(pod, source.service_account_token, local)
                    elif source.downward_api is not None:
                        self._write_downward(pod, source.downward_api.items or [], local)
            elif volume.downward_api is not None:
                self._write_downward(pod, volume.downward_api.items or [], local)
            else:
                raise _ConfigError(f"volume {volume.name}: this node supports no such source")
            local.mkdir(parents=True, exist_ok=True)
            result[volume.name] = _Volume(local, read_only=written)
        return result

    @staticmethod
    def _write_files(
        directory: Path, data: Mapping[str, bytes], items: list[client.V1KeyToPath] | None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        mapping = {i.key: i.path for i in items} if items else {k: k for k in data}
        for key, rel in mapping.items():
            if key in data:
                target = directory / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[key])

    def _write_config_map(
        self, pod: client.V1Pod, name: str, items: list[client.V1KeyToPath] | None, local: Path
    ) -> None:
        cm = self.core.read_namespaced_config_map(name, pod.metadata.namespace)
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        self._write_files(local, data, items)

    def _write_secret(
        self, pod: client.V1Pod, name: str, items: list[client.V1KeyToPath] | None, local: Path
    ) -> None:
        secret = self.core.read_namespaced_secret(name, pod.metadata.namespace)
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        self._write_files(local, data, items)

    def _write_token(
        self, pod: client.V1Pod, source: client.V1ServiceAccountTokenProjection, local: Path
    ) -> None:
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[source.audience] if source.audience else [],
                expiration_seconds=source.expiration_seconds or 3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        )
        token = self.core.create_namespaced_service_account_token(
            pod.spec.service_account_name or "default", pod.metadata.namespace, request
        )
        self._write_files(local, {source.path: token.status.token.encode()}, None)

    def _write_downward(
        self, pod: client.V1Pod, items: list[client.V1DownwardAPIVolumeFile], local: Path
    ) -> None:
        data = {}
        for item in items:
            if item.field_ref is not None:
                data[item.path] = self._field(pod, item.field_ref.field_path).encode()
        self._write_files(local, data, None)

    def _field(self, pod: client.V1Pod, path: str) -> str:
        meta = pod.metadata
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.node,
            "spec.serviceAccountName": pod.spec.service_account_name or "default",
            "status.podIP": LOCAL_IP,
            "status.hostIP": LOCAL_IP,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((getattr(meta, match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            pairs = getattr(meta, path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(pairs.items()))
        return ""

    def _container_env(self, pod: client.V1Pod, container: client.V1Container) -> dict[str, str]:
        env: dict[str, str] = {}
        ns = pod.metadata.namespace
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.config_map_ref is not None:
                cm = self.core.read_namespaced_config_map(source.config_map_ref.name, ns)
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
            if source.secret_ref is not None:
                secret = self.core.read_namespaced_secret(source.secret_ref.name, ns)
                env.update(
                    {
                        prefix + k: base64.b64decode(v).decode()
                        for k, v in (secret.data or {}).items()
                    }
                )
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = expand(var.value or "", env)
            elif var.value_from.field_ref is not None:
                env[var.name] = self._field(pod, var.value_from.field_ref.field_path)
            elif var.value_from.config_map_key_ref is not None:
                ref = var.value_from.config_map_key_ref
                env[var.name] = (self.core.read_namespaced_config_map(ref.name, ns).data or {}).get(
                    ref.key, ""
                )
            elif var.value_from.secret_key_ref is not None:
                ref = var.value_from.secret_key_ref
                raw = (self.core.read_namespaced_secret(ref.name, ns).data or {}).get(ref.key, "")
                env[var.name] = base64.b64decode(raw).decode()
        return env

    # -- status -----------------------------------------------------------------------------

    def _patch_status(self, pod: client.V1Pod, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name,
                pod.metadata.namespace,
                {"status": status},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    @staticmethod
    def _conditions(ready: bool, initialized: bool) -> list[dict[str, str]]:
        now = _now()
        states = {
            "PodScheduled": True,
            "Initialized": initialized,
            "ContainersReady": ready,
            "Ready": ready,
        }
        return [
            {"type": t, "status": "True" if ok else "False", "lastTransitionTime": now}
            for t, ok in states.items()
        ]

    def _running_status(self, pod: client.V1Pod, started: str, *, init: bool) -> dict[str, Any]:
        def status(c: client.V1Container, running: bool) -> dict[str, Any]:
            state = (
                {"running": {"startedAt": _now()}}
                if running
                else {"waiting": {"reason": "PodInitializing"}}
            )
            return {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": running,
                "started": running,
                "restartCount": 0,
                "state": state,
            }

        return {
            "phase": "Pending" if init else "Running",
            "hostIP": LOCAL_IP,
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": started,
            "conditions": self._conditions(ready=not init, initialized=not init),
            "containerStatuses": [status(c, not init) for c in pod.spec.containers],
        }

    def _waiting_status(self, pod: client.V1Pod, reason: str, message: str) -> dict[str, Any]:
        def status(c: client.V1Container) -> dict[str, Any]:
            return {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            }

        result: dict[str, Any] = {
            "phase": "Pending",
            "hostIP": LOCAL_IP,
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": _now(),
            "conditions": self._conditions(ready=False, initialized=False),
            "containerStatuses": [status(c) for c in pod.spec.containers],
        }
        if pod.spec.init_containers:
            result["initContainerStatuses"] = [status(c) for c in pod.spec.init_containers]
        return result

    def _final_status(
        self,
        pod: client.V1Pod,
        exits: Mapping[str, _Exit],
        error: str,
        started: str | None = None,
    ) -> dict[str, Any]:
        def status(c: client.V1Container) -> dict[str, Any]:
            done = exits.get(c.name) or _Exit(1, _now(), _now(), error, "Error")
            terminated: dict[str, Any] = {
                "exitCode": done.code,
                "reason": done.reason,
                "startedAt": done.started,
                "finishedAt": done.finished,
            }
            if done.message:
                terminated["message"] = done.message
            return {
                "name": c.name,
                "image": c.image,
                "imageID": done.image_id,
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }

        ok = not error and all(
            name in exits and exits[name].code == 0
            for name in (c.name for c in [*(pod.spec.init_containers or []), *pod.spec.containers])
        )
        result: dict[str, Any] = {
            "phase": "Succeeded" if ok else "Failed",
            "hostIP": LOCAL_IP,
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": started or _now(),
            "conditions": self._conditions(ready=False, initialized=True),
            "containerStatuses": [status(c) for c in pod.spec.containers],
        }
        if pod.spec.init_containers:
            result["initContainerStatuses"] = [status(c) for c in pod.spec.init_containers]
        if error:
            result["reason"] = error.split(":")[0]
            result["message"] = error
        return result


@dataclass(frozen=True)
class _Exit:
    """How one container ended, as its terminated state reports it."""

    code: int
    started: str
    finished: str
    message: str
    reason: str
    image_id: str = ""


@dataclass(frozen=True)
class _Volume:
    """A pod volume on this machine."""

    path: Path
    read_only: bool


class _ConfigError(Exception):
    """The container cannot be created as specified (CreateContainerConfigError)."""


def _security_args(
    pod: client.V1Pod, container: client.V1Container, image: Mapping[str, Any]
) -> list[str]:
    """podman flags for the pod's and the container's security context."""
    pod_sc = pod.spec.security_context or client.V1PodSecurityContext()
    sc = container.security_context or client.V1SecurityContext()
    user = sc.run_as_user if sc.run_as_user is not None else pod_sc.run_as_user
    group = sc.run_as_group if sc.run_as_group is not None else pod_sc.run_as_group
    non_root = sc.run_as_non_root if sc.run_as_non_root is not None else pod_sc.run_as_non_root
    image_user = str((image.get("Config") or {}).get("User") or "0").split(":")[0]
    if non_root and (user == 0 or (user is None and image_user in ("0", "root"))):
        raise _ConfigError("container has runAsNonRoot and image will run as root")
    if non_root and user is None and not image_user.isdigit():
        raise _ConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({image_user}), "
            "cannot verify user is non-root"
        )
    args: list[str] = []
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if pod_sc.fs_group is not None:
        args += ["--group-add", str(pod_sc.fs_group)]
    for extra in pod_sc.supplemental_groups or []:
        args += ["--group-add", str(extra)]
    if sc.read_only_root_filesystem:
        # Kubernetes adds no writable /tmp; only the pod's volumes are writable.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.privileged:
        args.append("--privileged")
    if sc.allow_privilege_escalation is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = sc.capabilities
    for cap in (caps.drop if caps else None) or []:
        args += ["--cap-drop", cap]
    for cap in (caps.add if caps else None) or []:
        args += ["--cap-add", cap]
    seccomp = sc.seccomp_profile or pod_sc.seccomp_profile
    if seccomp is not None and seccomp.type == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    return args


def _limit_args(container: client.V1Container) -> list[str]:
    """Memory and CPU limits, CPU clamped to this machine (podman refuses more)."""
    limits = (container.resources.limits if container.resources else None) or {}
    args: list[str] = []
    if "memory" in limits:
        args += ["--memory", str(_quantity(str(limits["memory"])))]
    if "cpu" in limits:
        cpus = min(_quantity(str(limits["cpu"])), float(os.cpu_count() or 1))
        args += ["--cpus", f"{cpus:g}"]
    return args


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}  # fmt: skip


def _quantity(text: str) -> float:
    """A Kubernetes quantity (``16Gi``, ``500m``, ``2``) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text.strip())
    if not match or (match.group(2) and match.group(2) not in _SUFFIXES):
        raise _ConfigError(f"cannot read the quantity {text!r}")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2), 1)


def _mount_args(
    container: client.V1Container, volumes: Mapping[str, _Volume], env: Mapping[str, str]
) -> list[str]:
    """Bind mounts for the container's volumeMounts; subPaths stay inside their volume.

    As the kubelet does: ``subPathExpr`` is expanded from the container's environment; a subPath
    that does not exist is made a directory with the mode and group of the volume's root (so a
    volume's group, an fsGroup, can write it); one that names a file mounts that file.
    """
    args: list[str] = []
    for mount in container.volume_mounts or []:
        if mount.name not in volumes:
            raise _ConfigError(f"volume {mount.name} is not defined in the pod")
        volume = volumes[mount.name]
        source = volume.path
        sub_path = mount.sub_path
        if mount.sub_path_expr:
            if sub_path:
                raise _ConfigError(f"volumeMount {mount.name}: subPath and subPathExpr both set")
            sub_path = expand(mount.sub_path_expr, env)
            if _VAR_REF.search(sub_path):
                raise _ConfigError(f"subPathExpr {mount.sub_path_expr}: an unset variable")
        if sub_path:
            if sub_path.startswith("/") or ".." in sub_path.split("/"):
                raise _ConfigError(f"subPath {sub_path} must be a relative path inside its volume")
            source = (source / sub_path).resolve()
            if not source.is_relative_to(volume.path.resolve()):
                raise _ConfigError(f"subPath {sub_path} leaves volume {mount.name}")
            root = volume.path.stat()
            missing = [d for d in [source, *source.parents] if not d.exists()]
            for directory in reversed(missing):
                directory.mkdir()
                os.chown(directory, -1, root.st_gid)
                directory.chmod(stat.S_IMODE(root.st_mode))
        spec = f"type=bind,src={source},dst={mount.mount_path}"
        if mount.read_only or volume.read_only:
            spec += ",ro=true"
        args += ["--mount", spec]
    return args


def _inspect_and_remove(name: str) -> dict[str, Any] | None:
    """The ended container's state (OOMKilled among it); the container is removed."""
    found = subprocess.run(
        [*PODMAN, "container", "inspect", "--format", "json", name],
        capture_output=True,
        check=False,
    )
    subprocess.run([*PODMAN, "rm", "--force", name], capture_output=True, check=False)
    if found.returncode != 0:
        return None
    state: dict[str, Any] = json.loads(found.stdout)[0].get("State") or {}
    return state


def _selects(selector: client.V1LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector matches (an empty selector matches every pod)."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions or []:
        present, value = expr.key in labels, labels.get(expr.key)
        matched = {
            "In": present and value in (expr.values or []),
            "NotIn": not present or value not in (expr.values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }.get(expr.operator, False)
        if not matched:
            return False
    return True


def _memory_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 8 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    """Run the pod runner until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.podrunner")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    runner = PodRunner(config.new_client_from_config(args.kubeconfig), args.node, args.root)
    args.root.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, _frame: object) -> None:
        runner.stopping.set()
        # A stopped node takes its containers with it, running or just ended.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [
                    *PODMAN,
                    "rm",
                    "--force",
                    "--time",
                    "2",
                    "--filter",
                    f"label={LABEL_RUNNER}={runner.root}",
                ],
                capture_output=True,
                timeout=20,
                check=False,
            )
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + 120
    while True:
        try:
            runner.register_node()
            break
        except Exception:  # the apiserver may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    threading.Thread(target=runner.heartbeat_forever, daemon=True).start()
    log.info("running pods of node %s under %s", args.node, args.root)
    runner.watch_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
