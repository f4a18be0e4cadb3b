"""API server CPU for each request the operator makes per new Descendant, against its Job alone.

    .venv/bin/python bench/bench_requests.py [--count 300] [--rounds 3]

For a new founder the operator creates its breed Job, patches the Descendant's status and posts
one Event; a bare client creates only the Job. On the real test control plane this sends each
kind of request ``--count`` times from eight threads, with the operator's own request code and
bodies, and reads the API server's CPU time (from /proc) across each batch and the second after
it (watch fan-out, the garbage collector), and this process's own CPU time across the batch.
The kinds take turns for ``--rounds`` rounds; the median per kind is reported, the API
server's as a ratio to creating the Job. The Event is also posted through the Kubernetes
client's typed method, the client's CPU for the operator's request path against it. The Jobs
are created suspended, so no pods follow them into the next batch's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

from bench_operator import create_namespace, founder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster.controlplane import ControlPlane, build_binaries  # noqa: E402
from tests.cluster.fixtures import apply_crds, load_crds  # noqa: E402

from studbook import GROUP, VERSION  # noqa: E402
from studbook.api import Descendant, DescendantStatus, parse_manifest  # noqa: E402
from studbook.breeding.admission import Decision  # noqa: E402
from studbook.breeding.flow import Observed, Plan, reconcile  # noqa: E402
from studbook.breeding.tasks import breed_task  # noqa: E402
from studbook.controllers.descendants import EventPoster, event_record  # noqa: E402
from studbook.k8s import jobs as builders  # noqa: E402
from studbook.k8s.client import create, patch_status  # noqa: E402

NAMESPACE = "bench-requests"
THREADS = 8


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _founder_plan() -> Plan:
    """What the operator decides for a new founder: its breed Job, its status, its Event."""
    observed = Observed(
        name="founder",
        generation=1,
        status=DescendantStatus(),
        now=datetime.now(UTC),
        decision=Decision(),
    )
    plan = reconcile(observed)
    assert plan.create == (("breed", 1),) and len(plan.events) == 1
    return plan


def run(count: int, rounds: int) -> dict[str, Any]:
    """The whole benchmark; returns its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="studbook-bench-requests-"))
    plane = ControlPlane(workdir=workdir / "cluster", bin_dir=build_binaries())
    plane.start()
    try:
        api = config.new_client_from_config(str(plane.kubeconfig))
        apply_crds(api, load_crds())
        create_namespace(api, NAMESPACE)
        pid = plane.processes["kube-apiserver"].pid
        pool = ThreadPoolExecutor(THREADS)
        settings = builders.JobSettings(
            trainer_image="trainer",
            artifact_volume={"hostPath": {"path": str(workdir / "store")}},
            store_mount=str(workdir / "store"),
        )
        objects = client.CustomObjectsApi(api)
        bodies = {}
        for i in range(count):
            body = founder(f"founder-{i:04d}", NAMESPACE)
            bodies[body["metadata"]["name"]] = objects.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "descendants", body
            )
        names = list(bodies)
        plan = _founder_plan()
        status = plan.status.to_wire()
        post_event = EventPoster(api)

        def job(round_: int) -> Callable[[str], None]:
            def one(name: str) -> None:
                owner = parse_manifest(bodies[name])
                assert isinstance(owner, Descendant)
                attempt = round_ + 1
                task = breed_task(owner, [], settings.store_mount, builders.OUTPUT_MOUNT)
                body = builders.job(owner, "breed", attempt, settings, task, 3600)
                body["spec"]["suspend"] = True
                create(api, body)

            return one

        def patch(round_: int) -> Callable[[str], None]:
            # A new message each round, so every patch changes the object as the operator's do.
            changed = {**status, "message": f"{status['message']} ({round_})"}

            def one(name: str) -> None:
                patch_status(api, Descendant, NAMESPACE, name, changed)

            return one

        def post(round_: int) -> Callable[[str], None]:
            def one(name: str) -> None:
                post_event(bodies[name], plan.events[0])

            return one

        core = client.CoreV1Api(api)

        def post_typed(round_: int) -> Callable[[str], None]:
            def one(name: str) -> None:
                core.create_namespaced_event(NAMESPACE, event_record(bodies[name], plan.events[0]))

            return one

        kinds = {
            "create Job": job,
            "patch Descendant status": patch,
            "create Event": post,
            TYPED_EVENT: post_typed,
        }
        server: dict[str, list[float]] = {kind: [] for kind in kinds}
        own: dict[str, list[float]] = {kind: [] for kind in kinds}
        for round_ in range(rounds):
            for kind, make in kinds.items():
                send = make(round_)
                time.sleep(2)  # what the previous batch set off settles first
                before, began = _cpu_seconds(pid), time.process_time()
                list(pool.map(send, names))
                own[kind].append(1000 * (time.process_time() - began) / count)
                time.sleep(1)
                server[kind].append(1000 * (_cpu_seconds(pid) - before) / count)
                print(
                    f"round {round_ + 1}: {kind}: API server {server[kind][-1]:.2f} ms, "
                    f"client {own[kind][-1]:.2f} ms",
                    flush=True,
                )
        pool.shutdown()
    finally:
        plane.stop()
    return _figures(count, rounds, server, own)


TYPED_EVENT = "create Event (client's typed method)"


def _figures(
    count: int, rounds: int, server: dict[str, list[float]], own: dict[str, list[float]]
) -> dict[str, Any]:
    """Medians per kind; the API server's against the Job, the client's against typed."""
    server_ms = {kind: statistics.median(values) for kind, values in server.items()}
    own_ms = {kind: statistics.median(values) for kind, values in own.items()}
    job_ms = server_ms["create Job"]
    figures: dict[str, Any] = {"count": count, "rounds": rounds}
    for kind in server_ms:
        figures[kind] = {
            "api_server_ms": round(server_ms[kind], 2),
            "api_server_ratio_to_job": round(server_ms[kind] / job_ms, 2),
            "client_ms": round(own_ms[kind], 2),
        }
    operator = [kind for kind in server_ms if kind != TYPED_EVENT]
    figures["api_server_per_new_descendant_ratio_to_job"] = round(
        sum(server_ms[kind] for kind in operator) / job_ms, 2
    )
    figures["client_event_ratio_to_typed"] = round(own_ms["create Event"] / own_ms[TYPED_EVENT], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.count, args.rounds), indent=2))


if __name__ == "__main__":
    main()
