"""Small helpers over the Kubernetes Python client: typed reads, idempotent creates, status."""

from __future__ import annotations

import json
from typing import Any, TypeVar, cast
from urllib.parse import quote
from weakref import WeakKeyDictionary

# Imported with this module, not on first use as the client would: its API modules take about
# two seconds to load, CoreV1Api's most, and every reconciling thread that needs one meanwhile
# waits on the import lock. The operator's first Descendants would pay that wait.
from kubernetes import config
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPConnectionPool, PoolManager
from urllib3.util import parse_url

from studbook import GROUP, VERSION
from studbook.api.resource import Resource

R = TypeVar("R", bound=Resource)


def api_client(connections: int) -> ApiClient:
    """A client of the cluster this runs in, or else of the kubeconfig's current context.

    It keeps up to ``connections`` connections open: size it to the threads that call at once.
    urllib3 closes a connection that comes back to a full pool (the client's default size is
    five per CPU), so the threads beyond it would open one, with a TLS handshake on both ends,
    for each request.
    """
    configuration = Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = connections
    return ApiClient(configuration)


def get_object(
    api: ApiClient, cls: type[Resource], namespace: str, name: str
) -> dict[str, Any] | None:
    """The raw body of a Studbook resource, or ``None`` if it does not exist."""
    objects = CustomObjectsApi(api)
    try:
        body = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, cls.crd.plural, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], body)


def get_resource(api: ApiClient, cls: type[R], namespace: str, name: str) -> R | None:
    """A Studbook resource by name, typed, or ``None`` if it does not exist.

    Raises pydantic's ``ValidationError`` when the stored object does not fit the model.
    """
    body = get_object(api, cls, namespace, name)
    return None if body is None else cls.model_validate_json(json.dumps(body))


COLLECTIONS = {
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Descendant": f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/descendants",
    "Event": "/api/v1/namespaces/{namespace}/events",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
}
"""Where ``create`` posts each kind it knows."""
JSON_PATCH = "application/json-patch+json"


Connection = HTTPConnectionPool | PoolManager
_CONNECTIONS: WeakKeyDictionary[ApiClient, tuple[Connection, str]] = WeakKeyDictionary()


def _connection(api: ApiClient) -> tuple[Connection, str]:
    """Where ``_send`` sends: the API server's own connection pool and its URL prefix.

    Behind a proxy, the client's pool manager and the full URL instead.
    """
    found = _CONNECTIONS.get(api)
    if found is None:
        host = api.configuration.host
        manager = api.rest_client.pool_manager
        if api.configuration.proxy:
            found = (manager, host)
        else:
            found = (manager.connection_from_url(host), parse_url(host).path or "")
        _CONNECTIONS[api] = found
    return found


def _send(
    api: ApiClient,
    method: str,
    path: str,
    params: dict[str, str],
    body: Any,
    content_type: str = "application/json",
) -> bytes:
    """One request with a plain JSON body; the response's body, unparsed.

    Sent on the client's own connections, with its headers and credentials, but past its
    request machinery: its typed methods would validate the body into their models and
    serialize it back, then parse the response into them again, and even its untyped path adds
    a third to the CPU each request costs here. The operator sends three for every new
    Descendant. Raises ``ApiException`` on refusal.
    """
    headers = {
        **api.default_headers,
        "Content-Type": content_type,
        "Accept": "application/json",
    }
    # auth_settings() also renews a token about to expire (in-cluster tokens rotate).
    token = api.configuration.auth_settings().get("BearerToken")
    if token is not None:
        headers[token["key"]] = token["value"]
    connection, prefix = _connection(api)
    url = prefix + path.format(**{key: quote(value, safe="") for key, value in params.items()})
    response = connection.urlopen(
        method, url, body=json.dumps(body).encode(), headers=headers, preload_content=True
    )
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.data


def create(api: ApiClient, body: dict[str, Any]) -> None:
    """Create a namespaced object from its plain body; raises ``ApiException`` on refusal."""
    _send(
        api, "POST", COLLECTIONS[body["kind"]], {"namespace": body["metadata"]["namespace"]}, body
    )


def create_if_absent(api: ApiClient, body: dict[str, Any]) -> bool:
    """Create a namespaced object unless one of that name exists; whether it was created."""
    try:
        create(api, body)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


FIELD_MANAGER = "studbook"
"""The field manager of what the operator applies."""
APPLY_PATCH = "application/apply-patch+yaml"


def apply(api: ApiClient, body: dict[str, Any]) -> None:
    """Server-side apply a namespaced object: create it, or set the fields Studbook owns.

    Forced, so an edit of an owned field is undone; a no-op when nothing differs, so applying
    on every watch event of the object cannot loop. Defaults the API server fills in are no
    difference, as they would be to a comparison of bodies.
    """
    meta = body["metadata"]
    _send(
        api,
        "PATCH",
        COLLECTIONS[body["kind"]] + "/{name}?fieldManager=" + FIELD_MANAGER + "&force=true",
        {"namespace": meta["namespace"], "name": meta["name"]},
        body,
        APPLY_PATCH,
    )


def patch_status(
    api: ApiClient, cls: type[Resource], namespace: str, name: str, status: dict[str, Any]
) -> str:
    """Replace the ``status`` of a Studbook resource; return the new ``resourceVersion``."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{cls.crd.plural}/{{name}}/status"
    # A JSON patch replaces status whole, so fields the new status drops go too.
    patch = [{"op": "add", "path": "/status", "value": status}]
    patched = _send(api, "PATCH", path, {"namespace": namespace, "name": name}, patch, JSON_PATCH)
    return str(json.loads(patched)["metadata"]["resourceVersion"])


def config_map_value(api: ApiClient, namespace: str, name: str, key: str) -> str | None:
    """One key of a ConfigMap, or ``None`` when the ConfigMap or key is absent."""
    try:
        found = CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    value: str | None = (found.data or {}).get(key)
    return value
