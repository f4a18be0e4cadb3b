"""A real Kubernetes control plane on 127.0.0.1, started from the binaries that build.sh makes.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as child processes,
plus the local pod runner (podrunner.py). Everything listens on loopback only, on free ports, and
keeps its state (PKI, etcd data, logs, kubeconfig) in one work directory.

Used by the pytest fixtures and by `up.sh` / `down.sh`:

    python -m tests.cluster.controlplane up --workdir DIR     # starts, writes DIR/kubeconfig
    python -m tests.cluster.controlplane down --workdir DIR   # stops what `up` started
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import http.client
import importlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"

# The nodes kwok pretends to run. The annotation is what kwok selects on; the GPU capacity is
# what the scheduler sees, so GPU requests really go through scheduling.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
FAKE_NODES: dict[str, dict[str, str]] = {
    "kwok-cpu-0": {"cpu": "16", "memory": "64Gi", "pods": "110"},
    "kwok-gpu-0": {"cpu": "32", "memory": "256Gi", "pods": "110", GPU_RESOURCE: "4"},
    "kwok-gpu-1": {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: "8"},
}

# The node whose pods the local pod runner executes as processes on this machine. It is tainted,
# so only pods that opt in (toleration + node selector) run for real; everything else goes to
# kwok's fake nodes.
LOCAL_NODE = "studbook-local"
LOCAL_NODE_LABEL = ("studbook.dev/local-runner", "true")
LOCAL_NODE_TAINT = {"key": "studbook.dev/local-runner", "value": "true", "effect": "NoSchedule"}

# Controllers the tests have no use for: storage (there is no volume plugin), certificates,
# autoscaling, DRA. Fewer informers start faster and leave the two cores to the tests.
_KCM_OFF = (
    "certificatesigningrequest-approving",
    "certificatesigningrequest-cleaner",
    "certificatesigningrequest-signing",
    "device-taint-eviction",
    "endpointslice-mirroring",
    "ephemeral-volume",
    "horizontal-pod-autoscaler",
    "kube-apiserver-serving-clustertrustbundle-publisher",
    "legacy-serviceaccount-token-cleaner",
    "node-ipam",
    "persistentvolume-attach-detach",
    "persistentvolume-binder",
    "persistentvolume-expander",
    "persistentvolume-protection",
    "persistentvolumeclaim-protection",
    "podcertificaterequest-cleaner",
    "podgroup-protection",
    "replicationcontroller",
    "resourceclaim",
    "resourcepoolstatusrequest",
    "storage-version-migrator",
    "storageversion-garbage-collector",
    "ttl",
    "volumeattributesclass-protection",
)

_PR_SET_PDEATHSIG = 1

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says why."""


def _build(*args: str) -> Path:
    """Run build.sh (which reuses what it built before); the directory it names."""
    proc = subprocess.run([str(HERE / "build.sh"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"tests/cluster/build.sh {' '.join(args)} failed with exit code {proc.returncode}:\n"
            + proc.stderr[-6000:]
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def build_binaries() -> Path:
    """Build the binaries (or reuse the cached ones) and return their directory."""
    return _build()


def helm_binary() -> Path:
    """Build Helm (or reuse the cached build) and return its path."""
    return _build("helm") / "helm"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class _Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _make_pki(directory: Path) -> _Pki:
    """Create a throwaway CA, the apiserver's serving cert, an admin client cert, SA keys."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365)

    # EC keys are generated in microseconds; RSA only where Kubernetes wants it (SA signing).
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "studbook-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        name: x509.Name, usage: ExtendedKeyUsageOID, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    serving, serving_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
            x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    # system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC policy.
    admin, admin_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "studbook-admin"),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = _Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    pki.serving_cert.write_bytes(serving.public_bytes(pem))
    _write_key(pki.serving_key, serving_key)
    pki.admin_cert.write_bytes(admin.public_bytes(pem))
    _write_key(pki.admin_key, admin_key)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def _kubeconfig(server: str, pki: _Pki) -> str:
    # JSON is valid YAML; absolute file paths keep the kubeconfig usable from any directory.
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "studbook-test",
                    "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "studbook-admin",
                    "user": {
                        "client-certificate": str(pki.admin_cert),
                        "client-key": str(pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "studbook-test",
                    "context": {"cluster": "studbook-test", "user": "studbook-admin"},
                }
            ],
            "current-context": "studbook-test",
        },
        indent=2,
    )


@dataclass
class ControlPlane:
    """A running (or startable) control plane; `start()` then `stop()`, or use `with`."""

    workdir: Path
    bin_dir: Path
    python: str = sys.executable
    # When the starting process dies (a killed pytest), the kernel stops the components, so no
    # cluster outlives its test session on a shared machine. `up` detaches and sets this False.
    tied_to_parent: bool = True
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int = 0
    startup_seconds: float = 0.0
    crd_names: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _began: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client certificate in system:masters)."""
        return self.workdir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        """One log file per component; kept after `stop()` for post-mortems."""
        return self.workdir / "logs"

    @property
    def runner_root(self) -> Path:
        """Where the local pod runner keeps its pods' volumes and logs."""
        return self.workdir / "local-node"

    @property
    def server(self) -> str:
        """The apiserver URL."""
        return f"https://{LOOPBACK}:{self.api_port}"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every component and wait until the cluster can run pods."""
        began = self._began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        # The kubernetes client takes seconds to import on a busy machine; do it meanwhile.
        importer = threading.Thread(target=importlib.import_module, args=("kubernetes.utils",))
        importer.start()
        pki = _make_pki(self.workdir / "pki")

        def mark(step: str) -> None:
            self.timings[step] = round(time.monotonic() - began, 2)

        try:
            self._start_etcd()
            mark("etcd")
            self._start_apiserver(pki)
            self.kubeconfig.write_text(_kubeconfig(self.server, pki))
            # Python with the kubernetes client takes seconds to import on a busy machine, so
            # the runner starts now and registers its node once the apiserver answers.
            self._start_runner()
            self._wait_http("kube-apiserver", self.api_port, "/readyz", pki)
            mark("kube-apiserver")
            # The rest only talk to the apiserver: start them together, then wait for each.
            kcm_port = self._start_controller_manager(pki)
            scheduler_port = self._start_scheduler()
            self._start_kwok()
            self._create_nodes()
            self._wait_http("kube-controller-manager", kcm_port, "/healthz", None, insecure=True)
            mark("kube-controller-manager")
            self._wait_http("kube-scheduler", scheduler_port, "/healthz", None, insecure=True)
            mark("kube-scheduler")
            self._wait_nodes_ready()
            mark("nodes")
            self._wait_default_service_account()
            mark("default-service-account")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        (self.workdir / "state.json").write_text(
            json.dumps(
                {
                    "pids": {name: proc.pid for name, proc in self.processes.items()},
                    "server": self.server,
                    "kubeconfig": str(self.kubeconfig),
                    "startup_seconds": round(self.startup_seconds, 2),
                    "timings": self.timings,
                },
                indent=2,
            )
        )

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.timings[f"spawn {name}"] = round(time.monotonic() - self._began, 2)
        log = (self.log_dir / f"{name}.log").open("ab")
        # Own process group: a Ctrl-C in the terminal goes to up.sh, not to the cluster, and
        # stop() can signal a component without touching anything else.
        self.processes[name] = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.tied_to_parent else None,
        )
        log.close()

    def _check_alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-4000:]
            raise ControlPlaneError(f"{name} exited with code {proc.returncode}; log tail:\n{tail}")

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://{LOOPBACK}:{client}"
        peer_url = f"http://{LOOPBACK}:{peer}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=studbook",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=studbook={peer_url}",
                # Test data is disposable; fsync dominates etcd latency on shared disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http("etcd", client, "/health", None)

    def _start_apiserver(self, pki: _Pki) -> None:
        self.api_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={LOOPBACK}",
                # Without a default route the apiserver cannot pick an address by itself.
                f"--advertise-address={LOOPBACK}",
                # 1.37 refuses a loopback address in the `kubernetes` Service's endpoints; nothing
                # in the tests reaches the apiserver through that Service.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self, pki: _Pki) -> int:
        port = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                # Token controller and root CA publisher: pods get working SA credentials.
                f"--service-account-private-key-file={pki.sa_key}",
                # Each controller acts as its own ServiceAccount, as kubeadm and managed clusters
                # run it: the Job controller creates a Job's Pods as
                # system:serviceaccount:kube-system:job-controller (the chart's store guard).
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # A single instance: leader election would only add seconds to every start.
                "--leader-elect=false",
                f"--controllers={','.join(['*', *(f'-{c}-controller' for c in _KCM_OFF)])}",
                "--v=1",
            ],
        )
        return port

    def _start_scheduler(self) -> int:
        port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        return port

    def _start_kwok(self) -> None:
        self._spawn(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(KWOK_ANNOTATION)}",
                # kwok ships no default stages; these are ours (see the file).
                f"--config={HERE / 'kwok-stages.yaml'}",
                "--cidr=10.244.0.0/16",
                f"--node-ip={LOOPBACK}",
                # kwok's own server (metrics, healthz) stays on loopback too.
                f"--server-address={LOOPBACK}:{free_port()}",
            ],
        )

    def _start_runner(self) -> None:
        env = dict(os.environ)
        # The runner is importable as tests.cluster.podrunner from the repository root.
        repo_root = str(HERE.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        self._spawn(
            "podrunner",
            [
                self.python,
                "-m",
                "tests.cluster.podrunner",
                f"--kubeconfig={self.kubeconfig}",
                f"--node={LOCAL_NODE}",
                f"--root={self.runner_root}",
            ],
            env=env,
        )

    def _create_objects(self, objects: list[dict[str, object]]) -> None:
        from kubernetes import config, utils

        api = config.new_client_from_config(str(self.kubeconfig))
        try:
            for obj in objects:
                utils.create_from_dict(api, obj)
        finally:
            api.close()

    def _create_nodes(self) -> None:
        nodes: list[dict[str, object]] = []
        for name, capacity in FAKE_NODES.items():
            labels = {"kubernetes.io/hostname": name, "type": "kwok"}
            if GPU_RESOURCE in capacity:
                labels["nvidia.com/gpu.present"] = "true"
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
                    },
                    # kwok keeps the capacity it is given; allocatable mirrors it.
                    "status": {"capacity": capacity, "allocatable": capacity},
                }
            )
        self._create_objects(nodes)

    # -- readiness --------------------------------------------------------------------------

    def _wait_http(
        self,
        name: str,
        port: int,
        path: str,
        pki: _Pki | None,
        *,
        insecure: bool = False,
        timeout: float = 60.0,
    ) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                if pki is None and not insecure:
                    conn: http.client.HTTPConnection = http.client.HTTPConnection(
                        LOOPBACK, port, timeout=5
                    )
                else:
                    ctx = ssl.create_default_context()
                    if insecure:
                        # Self-signed serving certs of KCM/scheduler; loopback only.
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                    else:
                        assert pki is not None
                        ctx.load_verify_locations(pki.ca_cert)
                        ctx.load_cert_chain(pki.admin_cert, pki.admin_key)
                    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=5, context=ctx)
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                conn.close()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {body[:500]}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not healthy after {timeout:.0f}s on {path}: {last}")

    def _wait_nodes_ready(self, timeout: float = 60.0) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(str(self.kubeconfig))
        core = client.CoreV1Api(api)
        wanted = {*FAKE_NODES, LOCAL_NODE}
        deadline = time.monotonic() + timeout
        try:
            while True:
                # Ready, and the node lifecycle controller has lifted its not-ready taints, so
                # the scheduler can use the node.
                ready = {
                    node.metadata.name
                    for node in core.list_node().items
                    if any(
                        c.type == "Ready" and c.status == "True"
                        for c in (node.status.conditions or [])
                    )
                    and not any(
                        t.key.startswith("node.kubernetes.io/") for t in (node.spec.taints or [])
                    )
                }
                if wanted <= ready:
                    return
                for name in ("kwok", "podrunner"):
                    self._check_alive(name)
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"nodes not Ready after {timeout:.0f}s: {wanted - ready}"
                    )
                time.sleep(0.2)
        finally:
            api.close()

    def _wait_default_service_account(self, timeout: float = 60.0) -> None:
        # Pods are refused until the service account controller made `default` in their
        # namespace; waiting here proves the controller-manager works.
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException

        api = config.new_client_from_config(str(self.kubeconfig))
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    core.read_namespaced_service_account("default", "default")
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                self._check_alive("kube-controller-manager")
                if time.monotonic() > deadline:
                    raise ControlPlaneError("no default service account: controller-manager idle")
                time.sleep(0.2)
        finally:
            api.close()

    # -- stop -------------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Stop all components, newest first; logs and the work directory stay."""
        for name in reversed(list(self.processes)):
            _terminate(self.processes[name], grace)
        self.processes.clear()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: PR_SET_PDEATHSIG delivers SIGTERM when the
    # thread that forked it exits.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        # The component's own session: its children (the pod runner's pods) go with it.
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _stop_from_state(workdir: Path) -> None:
    state_file = workdir / "state.json"
    if not state_file.exists():
        print(f"nothing to stop: no {state_file}", file=sys.stderr)
        return
    pids: dict[str, int] = json.loads(state_file.read_text())["pids"]
    for pid in reversed(list(pids.values())):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in pids.values():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    state_file.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a detached parent counts as gone.
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of up.sh / down.sh."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.controlplane")
    parser.add_argument("action", choices=["up", "down"])
    default_workdir = Path(
        os.environ.get("STUDBOOK_CLUSTER_DIR", Path(tempfile.gettempdir()) / "studbook-dev-cluster")
    ).resolve()
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()

    if args.action == "down":
        _stop_from_state(workdir)
        print(f"stopped; logs remain in {workdir / 'logs'}")
        return 0

    if (workdir / "state.json").exists():
        _stop_from_state(workdir)
    for stale in ("etcd", "pki", "local-node", "logs"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    try:
        bin_dir = build_binaries()
        plane = ControlPlane(workdir=workdir, bin_dir=bin_dir, tied_to_parent=False)
        plane.start()
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Detach: the components outlive this command until `down`.
    plane.processes.clear()
    print(
        f"control plane up in {plane.startup_seconds:.1f}s at {plane.server}\n"
        f"  export KUBECONFIG={plane.kubeconfig}\n"
        f"  kubectl get nodes\n"
        f"logs: {plane.log_dir}\n"
        f"stop: tests/cluster/down.sh"
        + (f" --workdir {workdir}" if workdir != default_workdir else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
