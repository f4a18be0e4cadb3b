"""pytest plugin: a real control plane for tests marked `cluster`.

Registered from tests/conftest.py. The `cluster` fixture builds (or reuses) the binaries, starts
the control plane once per session, applies every CRD in crds/ and waits until each is
Established. A failing build or start makes the tests fail with the reason, never skip.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane, ControlPlaneError, build_binaries

REPO = Path(__file__).resolve().parent.parent.parent
CRD_DIR = REPO / "crds"
PEERING_CRDS = REPO / "charts" / "studbook" / "crds" / "kopf.dev_peerings.yaml"
"""kopf's peering CRDs, as the chart installs them."""

_LOG_DIR_KEY = pytest.StashKey[Path]()


def load_crds(directory: Path = CRD_DIR) -> list[dict[str, object]]:
    """Every CustomResourceDefinition document in `directory`'s YAML files, sorted by file."""
    crds: list[dict[str, object]] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


def apply_crds(
    api: client.ApiClient, crds: list[dict[str, object]], timeout: float = 60.0
) -> list[str]:
    """Create (or replace) the CRDs and wait until every one is Established; return names."""
    ext = client.ApiextensionsV1Api(api)
    names: list[str] = []
    for crd in crds:
        name = str(crd["metadata"]["name"])  # type: ignore[index]
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            body = dict(crd)
            body["metadata"] = {
                **crd["metadata"],
                "resourceVersion": current.metadata.resource_version,
            }  # type: ignore[dict-item]
            ext.replace_custom_resource_definition(name, body)
        names.append(name)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise ControlPlaneError(f"CRDs not Established after {timeout:.0f}s: {sorted(pending)}")
        if pending:
            time.sleep(0.1)
    return names


def apply_peering_crds(api: client.ApiClient) -> list[str]:
    """Apply kopf's peering CRDs (they live in the chart, not in crds/); return their names."""
    return apply_crds(api, list(yaml.safe_load_all(PEERING_CRDS.read_text())))


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """The session's control plane, with the CRDs from crds/ applied and Established."""
    workdir = tmp_path_factory.mktemp("cluster")
    request.config.stash[_LOG_DIR_KEY] = workdir / "logs"
    try:
        bin_dir = build_binaries()
        plane = ControlPlane(workdir=workdir, bin_dir=bin_dir)
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"control plane unavailable: {exc}\nlogs: {workdir / 'logs'}", pytrace=False)
    try:
        api = config.new_client_from_config(str(plane.kubeconfig))
        try:
            plane.crd_names = apply_crds(api, load_crds())
        finally:
            api.close()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(cluster: ControlPlane) -> Iterator[client.ApiClient]:
    """An API client with the admin identity (system:masters) of the session's cluster."""
    api = config.new_client_from_config(str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, ready for pods (its `default` service account exists)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": name, "labels": {"studbook.dev/test": "true"}}})
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    # The namespace controller removes the contents in the background.
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def service_account_token(
    kube: client.ApiClient, namespace: str, account: str, seconds: int = 600
) -> str:
    """A token for an existing ServiceAccount, issued by the API server (TokenRequest)."""
    request = {"spec": {"expirationSeconds": seconds}}
    issued = client.CoreV1Api(kube).create_namespaced_service_account_token(
        account, namespace, request
    )
    return str(issued.status.token)


def service_account_client(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str, account: str
) -> client.ApiClient:
    """A client that authenticates as a new ServiceAccount, with a token the API server issues."""
    client.CoreV1Api(kube).create_namespaced_service_account(
        namespace, {"metadata": {"name": account}}
    )
    token = service_account_token(kube, namespace, account)
    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.workdir / "pki" / "ca.crt")
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


def grant(
    kube: client.ApiClient, namespace: str, account: str, role: str, rules: list[dict[str, Any]]
) -> None:
    """A Role ``role`` with ``rules`` in ``namespace``, bound to the ServiceAccount ``account``."""
    rbac = client.RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": f"{account}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Point failing cluster tests at the component logs."""
    report: pytest.TestReport = yield
    log_dir = item.config.stash.get(_LOG_DIR_KEY, None)
    if report.failed and log_dir is not None and "cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("control plane logs", f"{log_dir} ({', '.join(_logs(log_dir))})"))
    return report


def _logs(log_dir: Path) -> list[str]:
    return sorted(p.name for p in log_dir.glob("*.log")) if log_dir.is_dir() else []


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say where cluster binaries come from, so a slow first run is not a mystery."""
    cache = os.environ.get("STUDBOOK_CACHE", str(Path.home() / ".cache" / "studbook"))
    return f"studbook cluster binaries: {cache}/cluster-bin (built by tests/cluster/build.sh)"
