"""The operator's own requests (``studbook.k8s.client``) against the real API server.

They go out on the Kubernetes client's connections but past its request machinery, so each
thing that machinery did for them is checked here: credentials of either kind, refusals as
``ApiException`` with their status, a server URL with a path, and a proxy.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from studbook.api import Descendant
from studbook.k8s.client import create, create_if_absent, patch_status
from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import grant, service_account_client
from tests.manifests import example
from tests.operator_fixtures import apply, read_resource, wait_for

pytestmark = pytest.mark.cluster


def _config_map(namespace: str, name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"k": "v"},
    }


def test_create_refusals_and_status_patch_with_a_client_certificate(
    kube: client.ApiClient, namespace: str
) -> None:
    assert create_if_absent(kube, _config_map(namespace, "one"))
    assert not create_if_absent(kube, _config_map(namespace, "one"))  # 409: there already
    with pytest.raises(ApiException) as invalid:
        create(kube, _config_map(namespace, "Not A Name"))
    assert invalid.value.status == 422
    assert "Not A Name" in str(invalid.value.body)

    founder = example("founder-import")
    founder["metadata"]["name"] = "founder"
    created = apply(kube, namespace, founder)
    status = {"phase": "Pending", "message": "waiting"}
    version = patch_status(kube, Descendant, namespace, "founder", status)
    stored = read_resource(kube, namespace, "descendants", "founder")
    assert stored["status"].items() >= status.items()  # with the schema's defaults
    assert version == stored["metadata"]["resourceVersion"]
    assert version != created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as missing:
        patch_status(kube, Descendant, namespace, "no-such-founder", status)
    assert missing.value.status == 404


def test_a_service_account_token_is_sent_and_its_rights_hold(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str
) -> None:
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    with service_account_client(cluster, kube, namespace, "writer") as as_writer:
        grant(kube, namespace, "writer", "configmap-writer", rules)

        def written() -> bool:  # anonymous, it would stay 403
            try:
                return create_if_absent(as_writer, _config_map(namespace, "written"))
            except ApiException as error:
                assert error.status == 403  # until the RoleBinding takes effect
                return False

        wait_for(written, timeout=10, what="the token's RoleBinding to take effect")
        with pytest.raises(ApiException) as refused:
            create(as_writer, {**_config_map(namespace, "x"), "kind": "Event"})
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:writer" in str(refused.value.body)
    read = client.CoreV1Api(kube).read_namespaced_config_map("written", namespace)
    assert read.data == {"k": "v"}


def test_a_server_url_with_a_path_keeps_it(cluster: ControlPlane, namespace: str) -> None:
    """A server behind a path (a gateway's cluster route): requests go below that path."""
    api = config.new_client_from_config(str(cluster.kubeconfig))
    api.configuration.host = f"{cluster.server}/no/such/prefix"
    with api, pytest.raises(ApiException) as wrong:
        create(api, _config_map(namespace, "prefixed"))
    assert wrong.value.status == 404  # the API server has no /no/such/prefix/api/v1/...


class _ConnectProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy that only tunnels (CONNECT), and counts the tunnels it opened."""

    daemon_threads = True
    tunnels = 0
    """Tunnels opened so far."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            method, target, _ = self.rfile.readline().decode().split(" ", 2)
            while self.rfile.readline().strip():
                pass  # the request's headers
            assert method == "CONNECT"
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            assert isinstance(self.server, _ConnectProxy)
            self.server.tunnels += 1
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()

            def pump(source: socket.socket, sink: socket.socket) -> None:
                try:
                    while data := source.recv(65536):
                        sink.sendall(data)
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the other side closed first

            back = threading.Thread(target=pump, args=(upstream, self.connection), daemon=True)
            back.start()
            pump(self.connection, upstream)
            back.join()


@pytest.fixture
def proxy() -> Iterator[_ConnectProxy]:
    with _ConnectProxy(("127.0.0.1", 0), _ConnectProxy.Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server
        server.shutdown()


def test_requests_go_through_the_configured_proxy(
    cluster: ControlPlane, namespace: str, proxy: _ConnectProxy
) -> None:
    cfg = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=cfg)
    cfg.proxy = f"http://127.0.0.1:{proxy.server_address[1]}"
    with client.ApiClient(cfg) as api:
        assert create_if_absent(api, _config_map(namespace, "proxied"))
        assert not create_if_absent(api, _config_map(namespace, "proxied"))
    assert proxy.tunnels >= 1
