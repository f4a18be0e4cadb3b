"""Peering between operator replicas: kopf lets only the one with the highest priority act."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from kubernetes import client

MAX_PRIORITY = 2**31 - 1


def replica_identity(environ: Mapping[str, str], hostname: str, pid: int) -> str:
    """A replica's name: ``POD_NAME`` (the chart sets it to the pod's name), else host and pid."""
    return environ.get("POD_NAME") or f"{hostname}-{pid}"


def derived_priority(identity: str) -> int:
    """A peering priority in [1, 2**31-1] that depends only on the replica's identity.

    kopf pauses every replica when two share the highest priority, so replicas need distinct
    ones; a hash of their names gives them that without coordination.
    """
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_PRIORITY + 1


PAUSED = "Pausing operations in favour of"
"""How kopf's log line begins when a peer outranks this replica (kopf/_core/engines/peering.py).

Only an acting replica logs it. One that finds such a peer at its start logs nothing: with a
peering name kopf starts every replica paused, and it stays so."""
RESUMED = "Resuming operations after the pause"
"""How kopf's log line begins when this replica acts again."""


def log_peering_decisions() -> None:
    """Show kopf's pauses and resumes, which it logs at INFO, below the operator's WARNING."""
    logging.getLogger("kopf._core.engines.peering").setLevel(logging.INFO)


def acts(records: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """Whether kopf lets a replica of ``priority`` act, judged from a peering object's status.

    ``records`` are the replicas' keep-alives by identity; each lives until its ``lastseen`` plus
    ``lifetime`` seconds. kopf pauses a replica while another live one has a higher or the same
    priority; the one live record of its own priority is taken to be its own.
    """
    live = [int(r.get("priority", 0)) for r in records.values() if _alive(r, now)]
    return all(p <= priority for p in live) and live.count(priority) <= 1


def _alive(record: Mapping[str, Any], now: datetime) -> bool:
    seen = record.get("lastseen")
    lifetime = timedelta(seconds=int(record.get("lifetime", 60)))
    return seen is None or datetime.fromisoformat(seen) + lifetime > now


class PeeringGate:
    """The namespaces where kopf lets this replica act, read from the peering objects.

    kopf pauses its own watches and handlers when a peer outranks this replica, but not threads
    of ours such as the sweeper, which would otherwise act on a stale view.
    """

    def __init__(self, api: client.ApiClient, name: str, priority: int, clusterwide: bool) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.name = name
        self.priority = priority
        self.clusterwide = clusterwide

    def __call__(self, namespaces: Collection[str]) -> set[str]:
        """Those of ``namespaces`` where this replica acts now."""
        if self.clusterwide:
            return set(namespaces) if self._acts(None) else set()
        return {namespace for namespace in namespaces if self._acts(namespace)}

    def _acts(self, namespace: str | None) -> bool:
        if namespace is None:
            found = self.objects.get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", self.name
            )
        else:
            found = self.objects.get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", self.name
            )
        status = cast(dict[str, Any], found).get("status") or {}
        return acts(status, self.priority, datetime.now(UTC))
