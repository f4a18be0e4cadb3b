"""What a container costs a Job: start overhead against a host process, as a ratio.

    .venv/bin/python bench/bench_containers.py [--rounds 5]

Runs the same commands as a host process (this clone's environment) and as a container of the
trainer image that `make images` built, with the flags the local pod runner gives a step pod
(non-root, read-only root, no capabilities, no network). Two commands: a bare interpreter start,
and a step's real start (`python3 -m studbook_trainer operators`: the trainer and torch
imported, the operators listed). The two ways take turns for ``--rounds`` rounds; the medians
are reported, with the container's as a ratio to the host process's and as seconds added.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster.images import image  # noqa: E402
from tests.cluster.podrunner import PODMAN, ULIMITS  # noqa: E402

COMMANDS = {
    "interpreter start": ["python3", "-c", "pass"],
    "step start (trainer + torch)": ["python3", "-m", "studbook_trainer", "operators"],
}


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _container(ref: str, command: list[str]) -> list[str]:
    return [
        *PODMAN,
        "run",
        "--rm",
        "--pull",
        "never",
        *ULIMITS,
        "--user",
        "65532:65532",
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "none",
        "--entrypoint",
        json.dumps(command),
        ref,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ref = image("trainer")
    host_python = str(REPO / ".venv" / "bin" / "python")
    rows = []
    for name, command in COMMANDS.items():
        host_argv = [host_python, *command[1:]]
        container_argv = _container(ref, command)
        # Once each first, to warm the page cache for both.
        _timed(host_argv)
        _timed(container_argv)
        host, contained = [], []
        for _ in range(args.rounds):
            host.append(_timed(host_argv))
            contained.append(_timed(container_argv))
        h, c = statistics.median(host), statistics.median(contained)
        rows.append((name, h, c))
    print(f"trainer image {ref}, {args.rounds} rounds, medians")
    print("| command | host process | container | ratio | added |")
    print("|---|---|---|---|---|")
    for name, h, c in rows:
        print(f"| {name} | {h:.2f} s | {c:.2f} s | {c / h:.2f} | {c - h:+.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
