"""Small helpers over the Kubernetes Python client: typed reads, idempotent creates, status."""

from __future__ import annotations

import json
from typing import Any, TypeVar, cast

# Imported with this module, not on first use as the client would: its API modules take about
# two seconds to load, CoreV1Api's most, and every reconciling thread that needs one meanwhile
# waits on the import lock. The operator's first Descendants would pay that wait.
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from studbook import GROUP, VERSION
from studbook.api.resource import Resource

R = TypeVar("R", bound=Resource)


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
    "Event": "/api/v1/namespaces/{namespace}/events",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
}
"""Where ``create`` posts each kind it knows."""


def create(api: ApiClient, body: dict[str, Any]) -> None:
    """Create a namespaced object from its plain body; raises ``ApiException`` on refusal.

    The body goes out as JSON, the response is read and dropped. The client's typed methods
    would first validate the body into its models and serialize them back, then parse the
    response into them again: for a Job, more of the operator's CPU than the request itself.
    """
    path = COLLECTIONS[body["kind"]]
    request = api.param_serialize(
        method="POST",
        resource_path=path,
        path_params={"namespace": body["metadata"]["namespace"]},
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)


def create_if_absent(api: ApiClient, body: dict[str, Any]) -> bool:
    """Create a namespaced object unless one of that name exists; whether it was created."""
    try:
        create(api, body)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def patch_status(
    api: ApiClient, cls: type[Resource], namespace: str, name: str, status: dict[str, Any]
) -> str:
    """Replace the ``status`` of a Studbook resource; return the new ``resourceVersion``."""
    objects = CustomObjectsApi(api)
    # A JSON patch replaces status whole, so fields the new status drops go too.
    patch = [{"op": "add", "path": "/status", "value": status}]
    patched = objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        cls.crd.plural,
        name,
        patch,
        _content_type="application/json-patch+json",
    )
    return str(cast(dict[str, Any], patched)["metadata"]["resourceVersion"])


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
