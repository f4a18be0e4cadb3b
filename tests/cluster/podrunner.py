"""A test device that plays kubelet for one node: its pods run as local processes.

There is no container runtime here, so the image is ignored and each container's command runs
with this machine's Python environment (the directory of the runner's interpreter comes first on
PATH, so `python` is the project's). What is honoured:

- command and args (with `$(VAR)` expansion; without a command, args[0] is the program),
  env (values, fieldRef, configMapKeyRef, secretKeyRef), envFrom, workingDir;
- volumes: emptyDir and hostPath, plus configMap, secret and projected sources (including service
  account tokens) written out as files. A container path under a volumeMount's mountPath is
  rewritten to the volume's local directory wherever it appears in command, args, env values and
  workingDir, because the process sees the host filesystem, not a container one;
- init containers in order, then the containers concurrently; the pod succeeds when all exit 0.

Status goes back to the API like a kubelet writes it: phase, conditions, podIP/hostIP and
containerStatuses with running and terminated states (exitCode, reason, timestamps). Restart
policies are treated as Never; a deleted pod's processes are killed and the pod is finalized.
Per-container output is in <root>/logs/<namespace>_<pod>_<container>.log.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import _die_with_parent

log = logging.getLogger("podrunner")

LOCAL_IP = "127.0.0.1"
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


def remap(text: str, mounts: Iterable[tuple[str, Path]]) -> str:
    """Rewrite container paths under a mountPath to their local directories.

    `mounts` must be ordered longest mountPath first, so nested mounts win. One pass over the
    text: a rewritten path is never rewritten again (the local directories may themselves lie
    under a mountPath such as /tmp).
    """
    locals_ = {m.rstrip("/"): str(local) for m, local in mounts if m.rstrip("/")}
    if not locals_:
        return text
    alternatives = "|".join(re.escape(prefix) for prefix in locals_)
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")
    return pattern.sub(lambda m: locals_[m.group(1)], text)


@dataclass
class _PodRun:
    """Bookkeeping for one pod while its processes run."""

    namespace: str
    name: str
    uid: str
    deleting: threading.Event = field(default_factory=threading.Event)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PodRunner:
    """Registers the node, keeps it alive, and runs every pod bound to it."""

    def __init__(self, api: client.ApiClient, node: str, root: Path) -> None:
        self.core = client.CoreV1Api(api)
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
        exit_codes: dict[str, tuple[int, str, str, str]] = {}
        try:
            volumes = self._prepare_volumes(pod, pod_dir)
            self._patch_status(pod, self._running_status(pod, started, init=True))
            for container in pod.spec.init_containers or []:
                code = self._run_container(pod, run, container, volumes, pod_dir)
                exit_codes[container.name] = code
                if code[0] != 0 or run.deleting.is_set():
                    break
            else:
                self._patch_status(pod, self._running_status(pod, started, init=False))
                exit_codes.update(self._run_all(pod, run, volumes, pod_dir))
            reason = ""
        except Exception as exc:
            log.exception("pod %s/%s could not run", run.namespace, run.name)
            reason = f"RunnerError: {exc}"
        log.info(
            "pod %s/%s finished: %s%s",
            run.namespace,
            run.name,
            {name: code[0] for name, code in exit_codes.items()},
            " (deleted)" if run.deleting.is_set() else "",
        )
        if run.deleting.is_set():
            self._finalize(run.namespace, run.name, run.uid)
        else:
            self._patch_status(pod, self._final_status(pod, exit_codes, reason, started))
        self.runs.pop(run.uid, None)

    def _run_all(
        self, pod: client.V1Pod, run: _PodRun, volumes: dict[str, Path], pod_dir: Path
    ) -> dict[str, tuple[int, str, str, str]]:
        """Run the pod's containers side by side, as a kubelet does."""
        results: dict[str, tuple[int, str, str, str]] = {}

        def run_one(c: client.V1Container) -> None:
            results[c.name] = self._run_container(pod, run, c, volumes, pod_dir)

        threads = [threading.Thread(target=run_one, args=(c,)) for c in pod.spec.containers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def _run_container(
        self,
        pod: client.V1Pod,
        run: _PodRun,
        container: client.V1Container,
        volumes: dict[str, Path],
        pod_dir: Path,
    ) -> tuple[int, str, str, str]:
        """Run one container to completion: (exit code, started, finished, log tail)."""
        mounts = sorted(
            (
                (
                    m.mount_path,
                    volumes[m.name] / m.sub_path if m.sub_path else volumes[m.name],
                )
                for m in container.volume_mounts or []
                if m.name in volumes
            ),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        container_env = self._container_env(pod, container)
        env = dict(os.environ)
        env.update({k: remap(v, mounts) for k, v in container_env.items()})
        # `python` in a command means this environment's interpreter: the image is ignored.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        argv = [expand(a, container_env) for a in (container.command or [])]
        argv += [expand(a, container_env) for a in (container.args or [])]
        argv = [remap(a, mounts) for a in argv]
        if not argv:
            raise RuntimeError(f"container {container.name} has no command (the image is ignored)")
        workdir = (
            Path(remap(container.working_dir, mounts))
            if container.working_dir
            else pod_dir / "work" / container.name
        )
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.root / "logs" / f"{run.namespace}_{run.name}_{container.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = _now()
        with log_path.open("wb") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # A killed runner takes its pods with it, as a stopped node would.
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                out.write(f"cannot start {argv[0]}: {exc}\n".encode())
                return 127, started, _now(), str(exc)
            with run.lock:
                run.procs[container.name] = proc
            if run.deleting.is_set():
                self._kill(run)
            code = proc.wait()
        with run.lock:
            run.procs.pop(container.name, None)
        tail = log_path.read_bytes()[-2048:].decode(errors="replace")
        # A signal shows as 128+N, as with a container runtime.
        return (code if code >= 0 else 128 - code), started, _now(), tail

    def _kill(self, run: _PodRun, grace: float = 5.0) -> None:
        with run.lock:
            procs = list(run.procs.values())
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue

        def escalate() -> None:
            time.sleep(grace)
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)

        threading.Thread(target=escalate, daemon=True).start()

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

    def _prepare_volumes(self, pod: client.V1Pod, pod_dir: Path) -> dict[str, Path]:
        result: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            local = pod_dir / "volumes" / volume.name
            if volume.host_path is not None:
                local = Path(volume.host_path.path)
                if volume.host_path.type in ("DirectoryOrCreate", None, ""):
                    local.mkdir(parents=True, exist_ok=True)
            elif volume.empty_dir is not None:
                local.mkdir(parents=True, exist_ok=True)
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
                log.warning("volume %s of %s: unsupported source", volume.name, pod.metadata.name)
                local.mkdir(parents=True, exist_ok=True)
            result[volume.name] = local
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

    def _final_status(
        self,
        pod: client.V1Pod,
        exit_codes: Mapping[str, tuple[int, str, str, str]],
        error: str,
        started: str | None = None,
    ) -> dict[str, Any]:
        def status(c: client.V1Container) -> dict[str, Any]:
            code, begun, finished, tail = exit_codes.get(c.name, (1, _now(), _now(), error))
            terminated: dict[str, Any] = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": begun,
                "finishedAt": finished,
            }
            if code != 0:
                terminated["message"] = tail or error
            return {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }

        ok = not error and all(
            exit_codes.get(c.name, (1,))[0] == 0
            for c in [*(pod.spec.init_containers or []), *pod.spec.containers]
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
        for run in list(runner.runs.values()):
            runner._kill(run, grace=2.0)
        # Give the kill a moment, then leave; the control plane is going away too.
        time.sleep(0.5)
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
