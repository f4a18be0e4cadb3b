"""Operator throughput and latency against a bare client, on the real test control plane.

    .venv/bin/python bench/bench_operator.py [--descendants 500] [--population 2000]

In one run, on one control plane with kwok GPU nodes completing Jobs, each phase starting once
the previous one has settled (every Job finished, every Descendant terminal):

1. baseline: a bare client creates, for N descendants, the Jobs the operator would create, as
   fast as it can, serially;
2. backlog: N Descendants applied while the operator is paused by a higher-priority peer, then
   released; the rate at which it turns them into Jobs, as a ratio to the baseline (the
   operator's throughput, which the streaming rate cannot show: there the bench's own applies
   set the pace);
3. streaming: N Descendants applied one after the other while the operator runs; the time from
   each apply to its Job (p50, p99) and the rate at which Jobs appear;
4. relisting backlog: the backlog again, now that the namespace also holds the 2N finished
   Descendants and their Jobs of the phases before, which the operator lists again as it
   resumes, as it would after a restart;
5. more Descendants are applied until the namespace holds ``--population``, and the operator's
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster.controlplane import ControlPlane, build_binaries  # noqa: E402
from tests.cluster.fixtures import apply_crds, apply_peering_crds, load_crds  # noqa: E402

from studbook import GROUP, VERSION  # noqa: E402
from studbook.api import Descendant, parse_manifest  # noqa: E402
from studbook.breeding.flow import TERMINAL  # noqa: E402
from studbook.breeding.tasks import breed_task  # noqa: E402
from studbook.controllers.peering import MAX_PRIORITY, PAUSED  # noqa: E402
from studbook.k8s import jobs as builders  # noqa: E402

EXAMPLES = REPO / "examples"
PEERING = "bench"
HOLDER = "bench-holder"
"""A peer that never runs: while its record is live, kopf pauses the operator."""


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return loaded


def founder(name: str, namespace: str) -> dict[str, Any]:
    """The example founder import as ``name``, asking for one GPU and no Job retries."""
    body = _example("founder-import")
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["resources"] = {"gpus": 1, "backoffLimit": 0}
    return body


def create_namespace(api: client.ApiClient, name: str) -> None:
    """Create a namespace and wait for its default ServiceAccount (pods need it)."""
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
    create_namespace(api, namespace)
    owners = []
    for i in range(count):
        body = founder(f"founder-{i:04d}", namespace)
        body["metadata"]["uid"] = f"00000000-0000-0000-0000-{i:012d}"
        resource = parse_manifest(body)
        assert isinstance(resource, Descendant)
        owners.append(resource)
    batch = client.BatchV1Api(api)
    began = time.perf_counter()
    for owner in owners:
        task = breed_task(owner, [], settings.store_mount, builders.OUTPUT_MOUNT)
        job = builders.job(owner, "breed", 1, settings, task, 3600)
        job["metadata"].pop("ownerReferences")
        batch.create_namespaced_job(namespace, job)
    return count / (time.perf_counter() - began)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _wait(check: Callable[[], bool], what: str, timeout: float = 600) -> float:
    """Poll until ``check`` holds; the seconds it took."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - began


def _jobs_finished(api: client.ApiClient, namespace: str, count: int) -> bool:
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    finished = [
        j
        for j in jobs
        if any(c.status == "True" for c in (j.status.conditions or []) if c.type != "Suspended")
    ]
    return len(jobs) >= count and len(finished) == len(jobs)


def _all_terminal(api: client.ApiClient, namespace: str, prefix: str, count: int) -> bool:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "descendants"
    )["items"]
    ours = [d for d in listed if d["metadata"]["name"].startswith(prefix)]
    return len(ours) >= count and all(
        (d.get("status") or {}).get("phase") in TERMINAL for d in ours
    )


class JobWatch:
    """Records when the first Job of each Descendant whose name has ``prefix`` appears.

    Events stay plain JSON: parsing each into the client's models would cost the bench more
    CPU than anything else it does while it measures, on the cores the operator needs.
    """

    def __init__(self, api: client.ApiClient, namespace: str, prefix: str, count: int) -> None:
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        self._args = (api, namespace, prefix, count)
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(30)

    def _run(self) -> None:
        api, namespace, prefix, count = self._args
        stream = watch.Watch()
        batch = client.BatchV1Api(api)
        version = batch.list_namespaced_job(namespace).metadata.resource_version
        self._ready.set()
        for event in stream.stream(
            batch.list_namespaced_job,
            namespace,
            resource_version=version,
            timeout_seconds=900,
            deserialize=False,
        ):
            owner = event["object"]["metadata"]["labels"][builders.LABEL_DESCENDANT]
            if event["type"] == "ADDED" and owner.startswith(prefix):
                self.seen.setdefault(owner, time.perf_counter())
            if len(self.seen) >= count:
                stream.stop()
        self.done.set()


def _apply(objects: client.CustomObjectsApi, namespace: str, names: list[str]) -> dict[str, float]:
    applied = {}
    for name in names:
        applied[name] = time.perf_counter()
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "descendants", founder(name, namespace)
        )
    return applied


def _hold(objects: client.CustomObjectsApi, namespace: str, held: bool) -> None:
    """Add or remove a live peer that outranks the operator: kopf pauses it while it is there."""
    record = {
        "priority": MAX_PRIORITY,
        "lifetime": 900,
        "lastseen": datetime.now(UTC).isoformat(),
    }
    objects.patch_namespaced_custom_object(
        "kopf.dev",
        "v1",
        namespace,
        "kopfpeerings",
        PEERING,
        {"status": {HOLDER: record if held else None}},
    )


def _backlog(
    api: client.ApiClient,
    objects: client.CustomObjectsApi,
    namespace: str,
    log_path: Path,
    prefix: str,
    count: int,
    baseline_per_s: float,
) -> dict[str, Any]:
    """Apply ``count`` Descendants while the operator is paused; its rate once released."""
    # Each pause logs once; wait for this one.
    paused = log_path.read_text().count(PAUSED) + 1
    _hold(objects, namespace, True)
    _wait(lambda: log_path.read_text().count(PAUSED) >= paused, "the operator pausing", 60)
    _apply(objects, namespace, [f"{prefix}{i:04d}" for i in range(count)])
    jobs = JobWatch(api, namespace, prefix, count)
    released = time.perf_counter()
    _hold(objects, namespace, False)
    jobs.done.wait(600)
    figures: dict[str, Any] = {"backlog_jobs_seen": len(jobs.seen)}
    # Resuming (kopf noticing the peer left, then listing what it watches) is in the rate.
    figures["backlog_first_job_s"] = round(min(jobs.seen.values()) - released, 2)
    figures["backlog_jobs_per_s"] = round(len(jobs.seen) / (max(jobs.seen.values()) - released), 1)
    figures["ratio_to_baseline"] = round(figures["backlog_jobs_per_s"] / baseline_per_s, 2)
    figures["backlog_settled_s"] = round(
        _wait(lambda: _all_terminal(api, namespace, prefix, count), f"{prefix} terminal"), 1
    )
    return figures


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
        apply_peering_crds(api)
        store = workdir / "store"
        store.mkdir()
        settings = builders.JobSettings(
            trainer_image="trainer",
            artifact_volume={"hostPath": {"path": str(store)}},
            store_mount=str(store),
        )
        figures["baseline_per_s"] = round(baseline(api, count, settings), 1)
        figures["baseline_settled_s"] = round(
            _wait(lambda: _jobs_finished(api, "bench-baseline", count), "baseline Jobs"), 1
        )

        namespace = "bench-operator"
        create_namespace(api, namespace)
        objects = client.CustomObjectsApi(api)
        for kind, plural in (("policy", "breedingpolicies"), ("suite", "evaluationsuites")):
            body = _example(kind)
            body["metadata"]["namespace"] = namespace
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        objects.create_namespaced_custom_object(
            "kopf.dev",
            "v1",
            namespace,
            "kopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(plane.kubeconfig),
            "STUDBOOK_STORE": str(store),
            "STUDBOOK_JOB_STORE": str(store),
            "STUDBOOK_STORE_VOLUME": json.dumps({"hostPath": {"path": str(store)}}),
        }
        log_path = workdir / "operator.log"
        command = [sys.executable, "-m", "studbook", "operator", "-n", namespace]
        if profile:
            command = ["py-spy", "record", "-o", profile, "-f", "raw", "--", *command]
        operator = subprocess.Popen(
            [*command, "--metrics-port", "0", "--peering", PEERING, "--priority", "1"],
            env=env,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

        def policy_valid() -> bool:
            policy = objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "breedingpolicies", "standard"
            )
            return bool((policy.get("status") or {}).get("phase") == "Valid")

        # The clock starts once the operator is up: it has validated the policy.
        _wait(policy_valid, "the operator validating the policy", timeout=120)

        # The first backlog has only itself to list; the second, after the streaming phase,
        # also the 2N finished Descendants and Jobs of the phases before it, as a restart would.
        baseline_per_s = figures["baseline_per_s"]
        figures |= _backlog(api, objects, namespace, log_path, "backlog-", count, baseline_per_s)
        names = [f"stream-{i:04d}" for i in range(count)]
        jobs = JobWatch(api, namespace, "stream-", count)
        began = time.perf_counter()
        applied = _apply(objects, namespace, names)
        figures["stream_applied_per_s"] = round(count / (time.perf_counter() - began), 1)
        jobs.done.wait(600)
        latencies = sorted(jobs.seen[n] - applied[n] for n in names if n in jobs.seen)
        figures["stream_jobs_seen"] = len(latencies)
        figures["stream_jobs_per_s"] = round(len(latencies) / (max(jobs.seen.values()) - began), 1)
        figures["apply_to_job_p50_s"] = round(statistics.median(latencies), 2)
        figures["apply_to_job_p99_s"] = round(latencies[int(0.99 * (len(latencies) - 1))], 2)
        figures["stream_settled_s"] = round(
            _wait(lambda: _all_terminal(api, namespace, "stream-", count), "stream terminal"), 1
        )
        after = _backlog(api, objects, namespace, log_path, "relisting-", count, baseline_per_s)
        figures |= {f"relisting_{key}": value for key, value in after.items()}

        # Grow the watched population; the extra Descendants wait for a missing parent, so the
        # operator holds them all without more Jobs.
        for i in range(3 * count, population):
            body = founder(f"waiting-{i:04d}", namespace)
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
