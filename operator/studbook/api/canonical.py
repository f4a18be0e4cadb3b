"""Canonical JSON (RFC 8785) and the digests Studbook takes of configurations and specs."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from studbook.api.base import ApiModel


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON; API models are taken in their wire form."""
    if isinstance(value, ApiModel):
        value = value.to_wire()
    return rfc8785.dumps(value)


def digest_of(value: Any) -> str:
    """``sha256:`` of the canonical JSON of a value (a config hash, a suite digest)."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()
