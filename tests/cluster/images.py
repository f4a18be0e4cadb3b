"""The images `make images` built (images/build.sh writes images/built.json): the local pod
runner runs pods from them, by digest, so a test runs exactly this clone's build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUILT = Path(__file__).resolve().parents[2] / "images" / "built.json"


class ImagesMissing(RuntimeError):
    """The images were not built in this clone."""


def built(name: str) -> dict[str, Any]:
    """What the build recorded of the ``operator`` or ``trainer`` image: ref, id, digest..."""
    try:
        images = json.loads(BUILT.read_text())
    except FileNotFoundError:
        raise ImagesMissing(f"{BUILT} is missing: run `make images` first") from None
    record: dict[str, Any] = images[name]
    return record


def image(name: str) -> str:
    """The pinned reference (``repo@sha256:...``) of the built ``operator`` or ``trainer``."""
    return str(built(name)["pinned"])
