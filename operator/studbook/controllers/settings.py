"""Operator settings, read once from the environment at start-up."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studbook.k8s.jobs import JobSettings


class SettingsError(ValueError):
    """An environment variable of the operator is missing or malformed."""


def _json(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise SettingsError(f"{name} is not valid JSON: {error}") from None


@dataclass(frozen=True)
class OperatorSettings:
    """Where the artifact store is, and what the Jobs the operator creates look like."""

    store: str
    """The artifact store as the operator reaches it (a path or an fsspec URI)."""
    jobs: JobSettings
    """How Jobs are built; ``jobs.store_mount`` is the store as the Jobs see it."""
    signing_dir: Path | None = None
    """The operator's signing material (``key.pem``, a certificate, or a sigstore trust
    configuration): the operator signs in its own process, and nothing else mounts it."""

    @property
    def job_store(self) -> str:
        """The store's URI inside a Job's pod."""
        return self.jobs.store_mount

    @classmethod
    def from_env(cls) -> OperatorSettings:
        """Read ``STUDBOOK_*`` variables (documented in docs/operator.md)."""
        store = os.environ.get("STUDBOOK_STORE")
        if not store:
            raise SettingsError("STUDBOOK_STORE must name the artifact store (path or URI)")
        volume = _json(
            "STUDBOOK_STORE_VOLUME", {"persistentVolumeClaim": {"claimName": "studbook-artifacts"}}
        )
        egress = _json("STUDBOOK_STORE_EGRESS", [])
        if not isinstance(volume, dict) or not isinstance(egress, list):
            raise SettingsError("STUDBOOK_STORE_VOLUME is an object, STUDBOOK_STORE_EGRESS a list")
        jobs = JobSettings(
            trainer_image=os.environ.get(
                "STUDBOOK_TRAINER_IMAGE", "ghcr.io/studbook/trainer:0.1.0"
            ),
            artifact_volume=volume,
            store_mount=os.environ.get("STUDBOOK_JOB_STORE", "/work"),
            store_egress=tuple(egress),
        )
        signing = os.environ.get("STUDBOOK_SIGNING_DIR")
        return cls(store=store, jobs=jobs, signing_dir=Path(signing) if signing else None)
