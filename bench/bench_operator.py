"""Operator throughput and latency against a bare client, on the real test control plane.

    .venv/bin/python bench/bench_operator.py [--descendants 500] [--population 2000]

In one run, on one control plane with kwok GPU nodes completing Jobs:

1. a bare client creates, for N descendants, the Jobs the operator would create, as fast as it
   can: the baseline rate;
2. the operator reconciles N applied Descendants; the bench watches Jobs appear and reports the
   time from each apply to its Job (p50, p99) and the operator's rate, as a ratio to the
   baseline;
3. more Descendants are applied until the namespace holds ``--population``, and the operator's
   resident memory is read once it has seen them all.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster.controlplane import ControlPlane, build_binaries  # noqa: E402
from tests.cluster.fixtures import apply_crds, load_crds  # noqa: E402

from studbook import GROUP, VERSION  # noqa: E402
from studbook.api import Descendant, parse_manifest  # noqa: E402
from studbook.k8s import jobs as builders  # noqa: E402

EXAMPLES = REPO / "examples"


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return loaded


def _founder(name: str, namespace: str) -> dict[str, Any]:
    body = _example("founder-import")
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["resources"] = {"gpus": 1, "backoffLimit": 0}
    return body


def _create_ns(api: client.ApiClient, name: str) -> None:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.CoreV1Api(api).read_namespaced_service_account("default", name)
            return
        except client.exceptions.ApiException:
            time.sleep(0.1)


def baseline(api: client.ApiClient, count: int, settings: builders.JobSettings) -> float:
    """Jobs per second a bare client creates: the same Jobs the operator creates, serially."""
    namespace = "bench-baseline"
    _create_ns(api, namespace)
    owners = []
    for i in range(count):
        body = _founder(f"founder-{i:04d}", namespace)
        body["metadata"]["uid"] = f"00000000-0000-0000-0000-{i:012d}"
        resource = parse_manifest(body)
        assert isinstance(resource, Descendant)
        owners.append(resource)
    batch = client.BatchV1Api(api)
    began = time.perf_counter()
    for owner in owners:
        job = builders.job(owner, "breed", 1, settings, "{}")
        job["metadata"].pop("ownerReferences")
        batch.create_namespaced_job(namespace, job)
    return count / (time.perf_counter() - began)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(count: int, population: int, profile: str | None = None) -> dict[str, Any]:
    """The whole benchmark; returns its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="studbook-bench-operator-"))
    plane = ControlPlane(workdir=workdir / "cluster", bin_dir=build_binaries())
    plane.start()
    figures: dict[str, Any] = {"descendants": count, "population": population}
    operator: subprocess.Popen[bytes] | None = None
    try:
        api = config.new_client_from_config(str(plane.kubeconfig))
        apply_crds(api, load_crds())
        store = workdir / "store"
        store.mkdir()
        settings = builders.JobSettings(
            trainer_image="trainer",
            operator_image="operator",
            artifact_volume={"hostPath": {"path": str(store)}},
            store_mount=str(store),
        )
        figures["baseline_per_s"] = round(baseline(api, count, settings), 1)

        namespace = "bench-operator"
        _create_ns(api, namespace)
        objects = client.CustomObjectsApi(api)
        for kind, plural in (("policy", "breedingpolicies"), ("suite", "evaluationsuites")):
            body = _example(kind)
            body["metadata"]["namespace"] = namespace
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        env = {
            **os.environ,
            "KUBECONFIG": str(plane.kubeconfig),
            "STUDBOOK_STORE": str(store),
            "STUDBOOK_JOB_STORE": str(store),
            "STUDBOOK_STORE_VOLUME": json.dumps({"hostPath": {"path": str(store)}}),
        }
        log = (workdir / "operator.log").open("wb")
        command = [sys.executable, "-m", "studbook", "operator", "-n", namespace]
        if profile:
            command = ["py-spy", "record", "-o", profile, "-f", "raw", "--", *command]
        operator = subprocess.Popen(
            [*command, "--metrics-port", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        # The clock starts once the operator is up: it has validated the policy.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            policy = objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "breedingpolicies", "standard"
            )
            if (policy.get("status") or {}).get("phase") == "Valid":
                break
            time.sleep(0.2)
        applied: dict[str, float] = {}
        seen: dict[str, float] = {}
        done = threading.Event()

        def watch_jobs() -> None:
            stream = watch.Watch()
            for event in stream.stream(
                client.BatchV1Api(api).list_namespaced_job, namespace, timeout_seconds=600
            ):
                if event["type"] == "ADDED":
                    owner = event["object"].metadata.labels[builders.LABEL_DESCENDANT]
                    seen.setdefault(owner, time.perf_counter())
                if len(seen) >= count:
                    stream.stop()
            done.set()

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        began = time.perf_counter()
        for i in range(count):
            name = f"founder-{i:04d}"
            applied[name] = time.perf_counter()
            objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "descendants", _founder(name, namespace)
            )
        done.wait(600)
        latencies = sorted(seen[n] - applied[n] for n in applied if n in seen)
        figures["jobs_seen"] = len(latencies)
        figures["operator_per_s"] = round(len(latencies) / (max(seen.values()) - began), 1)
        figures["ratio_to_baseline"] = round(
            figures["operator_per_s"] / figures["baseline_per_s"], 2
        )
        figures["apply_to_job_p50_s"] = round(statistics.median(latencies), 2)
        figures["apply_to_job_p99_s"] = round(latencies[int(0.99 * (len(latencies) - 1))], 2)

        # Grow the watched population; the extra Descendants wait for a missing parent, so the
        # operator holds them all without more Jobs.
        for i in range(count, population):
            body = _founder(f"founder-{i:04d}", namespace)
            body["spec"] = _example("lora-specialist")["spec"]
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "descendants", body)
        time.sleep(30)
        figures["operator_rss_mb"] = round(_rss_kib(operator.pid) / 1024, 1)
    finally:
        if operator is not None:
            # SIGINT: py-spy writes its profile on it, the operator stops as on SIGTERM.
            operator.send_signal(signal.SIGINT)
            operator.wait(60)
        plane.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--descendants", type=int, default=500)
    parser.add_argument("--population", type=int, default=2000)
    parser.add_argument("--profile", help="record the operator with py-spy into this file")
    args = parser.parse_args()
    figures = run(args.descendants, args.population, args.profile)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
