"""The images `make images` built (images/build.sh writes images/built.json): the local pod
runner runs pods from them, by digest, so a test runs exactly this clone's build."""

from __future__ import annotations

import json
from pathlib import Path

BUILT = Path(__file__).resolve().parents[2] / "images" / "built.json"


class ImagesMissing(RuntimeError):
    """The images were not built in this clone."""


def image(name: str) -> str:
    """The pinned reference (``repo@sha256:...``) of the built ``operator`` or ``trainer``."""
    try:
        built = json.loads(BUILT.read_text())
    except FileNotFoundError:
        raise ImagesMissing(f"{BUILT} is missing: run `make images` first") from None
    return str(built[name]["pinned"])
