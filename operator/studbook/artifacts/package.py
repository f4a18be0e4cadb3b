"""The package: model files, ``lineage.json``, and the manifest that names them.

A sealed package in a store looks like this (``<hex>`` is the id without ``sha256:``)::

    sha256/<hex>/manifest.json        id, digest parameters, the file list (written last)
    sha256/<hex>/files/...            the model files and lineage.json (read-only)
    sha256/<hex>/signatures/*.sigstore.json
    sha256/<hex>/scorecards/<digest>.json and <digest>.sigstore.json

Signatures and scorecards live beside ``files/``, so signing or evaluating never changes the id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from studbook.artifacts.digest import DigestParams, FileEntry, artifact_id, check_id, split_id
from studbook.artifacts.errors import PackageFormatError

LINEAGE_FILE = "lineage.json"
"""The name of the lineage record inside every package."""

MANIFEST_FILE = "manifest.json"
"""The manifest beside the files: id, digest parameters, file list."""


def config_hash(config: Any) -> str:
    """``sha256:`` of the RFC 8785 canonical JSON of an operator config."""
    return "sha256:" + hashlib.sha256(rfc8785.dumps(config)).hexdigest()


class Lineage(BaseModel):
    """Where a package comes from; stored as ``lineage.json`` inside it (so the id binds it).

    It holds inputs only, so the same inputs give the same id: when and where an artifact was
    sealed belongs in its status and its signature, never in its content.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    parents: tuple[str, ...] = ()
    """Artifact ids of the parents; empty for a founder (operator ``import``)."""
    operator: str
    """The breeding operator that made it (``lora``, ``merge``, ``import``, ...)."""
    config_hash: str
    """``sha256:`` of the canonical JSON of the operator's config (see :func:`config_hash`)."""
    dataset_digests: dict[str, str] = Field(default_factory=dict)
    """Digest of every dataset the operator read, by dataset name."""
    code_version: str
    """The trainer's version (image digest or package version)."""

    @field_validator("parents")
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for parent in value:
            split_id(parent)
        if len(set(value)) != len(value):
            raise ValueError("a parent is listed twice")
        return value

    def to_bytes(self) -> bytes:
        """The canonical bytes written as ``lineage.json``."""
        return rfc8785.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Lineage:
        """Parse ``lineage.json``."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PackageFormatError(f"unreadable {LINEAGE_FILE}: {exc}") from exc


@dataclass(frozen=True)
class Manifest:
    """The manifest of a sealed package."""

    id: str
    """The artifact id."""
    params: DigestParams
    """How the id was computed."""
    files: tuple[FileEntry, ...]
    """Every file, sorted by path (``lineage.json`` included)."""

    def __post_init__(self) -> None:
        split_id(self.id)
        if list(self.files) != sorted(self.files):
            raise PackageFormatError("manifest files are not sorted by path")
        if LINEAGE_FILE not in {f.path for f in self.files}:
            raise PackageFormatError(f"a package must contain {LINEAGE_FILE}")

    @classmethod
    def build(cls, entries: list[FileEntry], params: DigestParams) -> Manifest:
        """Make the manifest of a list of entries, computing its id."""
        files = tuple(sorted(entries))
        return cls(artifact_id(files), params, files)

    @property
    def size(self) -> int:
        """Total bytes of the files."""
        return sum(f.size for f in self.files)

    def entry(self, path: str) -> FileEntry:
        """The entry of one file."""
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def to_bytes(self) -> bytes:
        """The canonical JSON written as ``manifest.json``."""
        return rfc8785.dumps(
            {
                "id": self.id,
                "digest": self.params.to_json(),
                "files": [f.to_json() for f in self.files],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, expected_id: str | None = None) -> Manifest:
        """Parse a manifest, recompute its id, and check it against ``expected_id``."""
        try:
            data = json.loads(raw)
            files = tuple(
                FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]
            )
            manifest = cls(str(data["id"]), DigestParams.from_json(data["digest"]), files)
        except (ValueError, KeyError, TypeError) as exc:
            raise PackageFormatError(f"unreadable {MANIFEST_FILE}: {exc}") from exc
        check_id(manifest.id, manifest.files)
        if expected_id is not None and manifest.id != expected_id:
            raise PackageFormatError(f"manifest is of {manifest.id}, expected {expected_id}")
        return manifest
