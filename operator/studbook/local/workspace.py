"""A local breeding workspace: its store, its signing key and its records, and file helpers.

``studbook breed`` keeps everything of one machine's breeding under one directory: the artifact
store (``store/``), the signing key (``signing/``), each descendant's status
(``registry.json``) and each BreedingRun's (``breedingruns.json``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studbook.api.descendant import Descendant, DescendantStatus
from studbook.api.run import BreedingRunStatus

NAMESPACE = "local"
"""The namespace of every run in a workspace: each run of a descendant keeps its tasks, logs and
records under ``runs/local/<name>/<run id>``, and each step writes into ``outputs/<its id>``."""

TRAINER = "studbook_trainer"
"""The trainer's entry point, what a breeding Job runs: ``python -m studbook_trainer``."""

Progress = Callable[[str, str], None]
"""Told each event of a descendant or a BreedingRun: its name and what happened."""
Activity = Callable[[str], None]
"""Told the latest output line of the step that is running, about twice a second."""


@dataclass
class Workspace:
    """Where local breeding keeps its store, its runs, its key and its registry."""

    root: Path

    @property
    def store(self) -> Path:
        """The artifact store."""
        return self.root / "store"

    @property
    def key_dir(self) -> Path:
        """The local signing key (``key.pem``), created on first use."""
        return self.root / "signing"

    @property
    def registry_path(self) -> Path:
        """Each descendant's status and the inputs it was bred from."""
        return self.root / "registry.json"

    @property
    def runs_path(self) -> Path:
        """Each BreedingRun's status, the id of its search and its best recipe."""
        return self.root / "breedingruns.json"

    def registry(self) -> dict[str, Any]:
        """The registry, empty for a new workspace."""
        if not self.registry_path.exists():
            return {}
        loaded: dict[str, Any] = json.loads(self.registry_path.read_text())
        return loaded

    def record(self, name: str, inputs: str, status: DescendantStatus) -> None:
        """Record one descendant; the registry is replaced atomically, so a crash loses nothing."""
        registry = self.registry()
        registry[name] = {"inputs": inputs, "status": status.to_wire()}
        replace_file(self.registry_path, json.dumps(registry, indent=2, sort_keys=True).encode())

    def runs(self) -> dict[str, Any]:
        """The BreedingRuns recorded so far, by name: ``runId``, ``status`` and ``best``."""
        if not self.runs_path.exists():
            return {}
        loaded: dict[str, Any] = json.loads(self.runs_path.read_text())
        return loaded

    def record_run(
        self, name: str, run: str, status: BreedingRunStatus, best: Descendant | None
    ) -> None:
        """Record one BreedingRun: its search's id, its status and the Descendant of its best."""
        runs = self.runs()
        runs[name] = {
            "runId": run,
            "status": status.to_wire(),
            "best": best.to_wire() if best is not None else None,
        }
        replace_file(self.runs_path, json.dumps(runs, indent=2, sort_keys=True).encode())

    def public_key(self) -> bytes:
        """The workspace's signing key, created on first use; its public half."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        path = self.key_dir / "key.pem"
        if not path.exists():
            self.key_dir.mkdir(parents=True, exist_ok=True)
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def replace_file(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a crash leaves the old one or the new one."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    partial.write_bytes(data)
    os.replace(partial, path)


def last_line(log: Path) -> str:
    """The last non-empty line of a step's log; progress bars rewrite theirs with CR."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 2048))
        tail = handle.read().decode(errors="replace")
    lines = [part.strip() for part in tail.replace("\r", "\n").splitlines() if part.strip()]
    return lines[-1] if lines else ""
