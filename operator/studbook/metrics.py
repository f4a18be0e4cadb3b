"""Prometheus metrics of the operator.

Counters and histograms are updated where things happen; the number of Descendants by phase and
stage, and how long the longest-waiting one has been in each unfinished phase, are computed at
scrape time from what the operator last saw of each one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from studbook.breeding.flow import TERMINAL

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
TRIALS = Counter(
    "studbook_trials_total", "BreedingRun trials told, by outcome (succeeded, failed)", ["outcome"]
)


class _Population(Collector):
    """Descendants by phase and stage, and the oldest wait in each unfinished phase.

    Both come from the last observation of each Descendant. A count cannot tell one Descendant
    stuck in a phase from a stream of new ones passing through it; the oldest age can. Ages
    count from when this process first saw a Descendant in its phase (a restarted operator
    starts them again), on ``clock``, a monotonic clock in seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._seen: dict[str, tuple[str, str]] = {}
        self._entered: dict[str, float] = {}
        """When each Descendant entered the phase it was last seen in."""

    def observe(self, uid: str, phase: str, stage: str | None) -> None:
        with self._lock:
            last = self._seen.get(uid)
            if last is None or last[0] != phase:
                self._entered[uid] = self._clock()
            self._seen[uid] = (phase, stage or "none")

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)
            self._entered.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = self._clock()
            tally = Tally(self._seen.values())
            oldest: dict[str, float] = {}
            for uid, (phase, _) in self._seen.items():
                if phase not in TERMINAL:
                    oldest[phase] = max(oldest.get(phase, 0.0), now - self._entered[uid])
        family = GaugeMetricFamily(
            "studbook_descendants", "Descendants by phase and stage", labels=["phase", "stage"]
        )
        for (phase, stage), count in sorted(tally.items()):
            family.add_metric([phase, stage], count)
        yield family
        # Only phases someone is in: an absent series, not a 0, when nobody waits.
        ages = GaugeMetricFamily(
            "studbook_descendant_oldest_phase_age_seconds",
            "Seconds the longest-waiting Descendant in each unfinished phase has been in it",
            labels=["phase"],
        )
        for phase, age in sorted(oldest.items()):
            ages.add_metric([phase], age)
        yield ages


POPULATION = _Population()
REGISTRY.register(POPULATION)


def serve(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (all interfaces, as a Pod's metrics port is)."""
    start_http_server(port)
