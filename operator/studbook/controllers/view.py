"""What the controllers read of the cluster, served from kopf's in-memory indexes.

Every Descendant event would otherwise cost reads of its policy, suite, parents and Jobs; the
indexes are kept current by the watch streams kopf runs anyway, so a reconciliation reads
nothing from the API server and only writes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from studbook.api.descendant import Descendant
from studbook.api.policy import BreedingPolicy
from studbook.api.resource import Resource
from studbook.api.suite import EvaluationSuite

R = TypeVar("R", bound=Resource)
Key = tuple[str, str]
Body = dict[str, Any]


# The latest parsed version of each object by uid: policies, suites and parents are read on every
# reconciliation of their dependents, but change rarely. A finished Descendant is forgotten (see
# ``Controller``): nothing reconciles it again, and only one that a later Descendant names as a
# parent is parsed again, so the cache holds what is in flight and what is depended on, not the
# whole population.
_PARSED: dict[str, tuple[type[Resource], str, Resource]] = {}
_PARSED_LOCK = threading.Lock()


def typed(cls: type[R], body: Body) -> R:
    """The typed resource of a body, parsed once per resourceVersion."""
    meta = body["metadata"]
    uid, version = str(meta.get("uid")), str(meta.get("resourceVersion"))
    with _PARSED_LOCK:
        found = _PARSED.get(uid)
    if found is not None and found[0] is cls and found[1] == version:
        return cast(R, found[2])
    parsed = cls.model_validate_json(json.dumps(body))
    with _PARSED_LOCK:
        _PARSED[uid] = (cls, version, parsed)
    return parsed


def forget(uid: str) -> None:
    """Drop an object's parsed version: it was deleted, or nothing needs it parsed any more."""
    with _PARSED_LOCK:
        _PARSED.pop(uid, None)


def indexed(body: Body) -> Body:
    """A body as an index keeps it: without ``metadata.managedFields``.

    Nothing here reads them, and they are often the largest part of an object.
    """
    metadata = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": metadata}


def indexed_job(body: Body) -> Body:
    """What reconciling reads of a Job, as its index keeps it.

    Its name, uid, labels, creation time, whether it is suspended, status and the first
    container's resources (for GPU hours); not the pod template and managed fields, most of a
    Job's size.
    """
    metadata = body["metadata"]
    kept = ("name", "namespace", "uid", "labels", "creationTimestamp")
    containers = body["spec"]["template"]["spec"]["containers"]
    return {
        "metadata": {k: metadata[k] for k in kept if k in metadata},
        "spec": {
            "suspend": bool(body["spec"].get("suspend")),
            "template": {
                "spec": {"containers": [{"resources": containers[0].get("resources") or {}}]}
            },
        },
        "status": body.get("status") or {},
    }


def _one(index: Mapping[Key, Any], key: Key) -> Body | None:
    values = index.get(key)
    if not values:
        return None
    # One object per (namespace, name); the newest wins if a replaced body lingers.
    found: Body = max(values, key=lambda b: int(b["metadata"].get("resourceVersion") or 0))
    return found


@dataclass(frozen=True)
class View:
    """Read-only access to the indexed objects of one moment."""

    policies: Mapping[Key, Any]
    """Policy bodies by (namespace, name)."""
    suites: Mapping[Key, Any]
    """Suite bodies by (namespace, name)."""
    descendants: Mapping[Key, Any]
    """Descendant bodies by (namespace, name)."""
    jobs: Mapping[Key, Any]
    """Job bodies by (namespace, owning Descendant's name)."""
    runs: Mapping[Key, Any] = field(default_factory=dict)
    """BreedingRun bodies by (namespace, name)."""
    run_jobs: Mapping[Key, Any] = field(default_factory=dict)
    """Trial Job bodies by (namespace, owning BreedingRun's name)."""

    def _typed(self, index: Mapping[Key, Any], cls: type[R], namespace: str, name: str) -> R | None:
        body = _one(index, (namespace, name))
        return None if body is None else typed(cls, body)

    def policy(self, namespace: str, name: str) -> BreedingPolicy | None:
        """A BreedingPolicy, typed."""
        return self._typed(self.policies, BreedingPolicy, namespace, name)

    def suite(self, namespace: str, name: str) -> EvaluationSuite | None:
        """An EvaluationSuite, typed."""
        return self._typed(self.suites, EvaluationSuite, namespace, name)

    def descendant(self, namespace: str, name: str) -> Descendant | None:
        """A Descendant, typed."""
        return self._typed(self.descendants, Descendant, namespace, name)

    def descendant_body(self, namespace: str, name: str) -> Body | None:
        """A Descendant's raw body."""
        return _one(self.descendants, (namespace, name))

    def jobs_of(self, namespace: str, name: str) -> list[Body]:
        """The Jobs a Descendant owns."""
        return list(self.jobs.get((namespace, name)) or [])

    def run_body(self, namespace: str, name: str) -> Body | None:
        """A BreedingRun's raw body."""
        return _one(self.runs, (namespace, name))

    def jobs_of_run(self, namespace: str, name: str) -> list[Body]:
        """The trial Jobs a BreedingRun owns."""
        return list(self.run_jobs.get((namespace, name)) or [])
