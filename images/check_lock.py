"""Check that a directory holds exactly the lock's versions: run inside an image build.

Usage: python3 check_lock.py LOCK DIRECTORY. Every distribution installed in DIRECTORY must be
pinned in LOCK at the version installed; anything else fails the build with the list.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: str, directory: str) -> int:
    """Compare the installed distributions with the lock's pins; print and fail on mismatch."""
    pins = {}
    for line in Path(lock).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^]]*\])?==([^\s;]+)", line)
        if match:
            pins[_normalize(match.group(1))] = match.group(2)
    wrong = []
    count = 0
    for dist in metadata.distributions(path=[directory]):
        count += 1
        name, version = _normalize(dist.metadata["Name"]), dist.version
        if pins.get(name) != version:
            wrong.append(f"{name}=={version} (lock: {pins.get(name, 'not pinned')})")
    if wrong:
        print("not the lock's versions:\n  " + "\n  ".join(sorted(wrong)), file=sys.stderr)
        return 1
    print(f"{count} distributions, each at the lock's version")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
