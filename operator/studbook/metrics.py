"""Prometheus metrics of the operator.

Counters and histograms are updated where things happen; the number of Descendants by phase and
stage is computed at scrape time from what the operator last saw of each one.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter(
    "studbook_reconciles_total",
    "Reconciliations, by resource kind and outcome",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "studbook_reconcile_duration_seconds",
    "Time one reconciliation took, by resource kind",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOB_FAILURES = Counter("studbook_job_failures_total", "Failed Job attempts, by step", ["step"])
JOB_RETRIES = Counter(
    "studbook_job_retries_total", "Job attempts after a failure, by step", ["step"]
)
ADMISSIONS_REFUSED = Counter(
    "studbook_admissions_refused_total", "Descendants refused at admission, by reason", ["reason"]
)
VERIFICATION_FAILURES = Counter(
    "studbook_signature_verification_failures_total",
    "Parent artifacts that failed verification, by error",
    ["error"],
)
GPU_HOURS = Counter(
    "studbook_gpu_hours_total", "GPU hours spent by finished Jobs, by namespace", ["namespace"]
)


class _Population(Collector):
    """Descendants by phase and stage, from the last observation of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, str]] = {}

    def observe(self, uid: str, phase: str, stage: str | None) -> None:
        with self._lock:
            self._seen[uid] = (phase, stage or "none")

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = Tally(self._seen.values())
        family = GaugeMetricFamily(
            "studbook_descendants", "Descendants by phase and stage", labels=["phase", "stage"]
        )
        for (phase, stage), count in sorted(tally.items()):
            family.add_metric([phase, stage], count)
        yield family


POPULATION = _Population()
REGISTRY.register(POPULATION)


def serve(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (all interfaces, as a Pod's metrics port is)."""
    start_http_server(port)
