"""The operator's scrape-time metrics: Descendants by phase, and how long the oldest waits."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from studbook.metrics import _Population

AGE = "studbook_descendant_oldest_phase_age_seconds"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _population() -> tuple[_Population, Clock, CollectorRegistry]:
    clock = Clock()
    population = _Population(clock)
    registry = CollectorRegistry()
    registry.register(population)
    return population, clock, registry


def _age(registry: CollectorRegistry, phase: str) -> float | None:
    return registry.get_sample_value(AGE, {"phase": phase})


def test_age_is_of_the_oldest_in_each_phase_and_counts_from_the_phase_change() -> None:
    population, clock, registry = _population()
    population.observe("a", "Breeding", None)
    clock.now += 100
    population.observe("b", "Breeding", None)
    population.observe("c", "Evaluating", None)
    clock.now += 50
    assert _age(registry, "Breeding") == 150  # a, not b
    assert _age(registry, "Evaluating") == 50
    # Seen again in the same phase (a sweep, an event): its clock keeps running.
    population.observe("a", "Breeding", "candidate")
    clock.now += 10
    assert _age(registry, "Breeding") == 160
    # a moves on: b is the oldest left in Breeding, a starts afresh in Evaluating.
    population.observe("a", "Evaluating", None)
    clock.now += 5
    assert _age(registry, "Breeding") == 65
    assert _age(registry, "Evaluating") == 65  # c, in Evaluating since 65 s
    assert (
        registry.get_sample_value("studbook_descendants", {"phase": "Evaluating", "stage": "none"})
        == 2
    )


def test_terminal_and_forgotten_descendants_have_no_age() -> None:
    population, clock, registry = _population()
    population.observe("a", "Signing", None)
    population.observe("b", "Ready", "candidate")
    population.observe("c", "Failed", None)
    clock.now += 30
    assert _age(registry, "Signing") == 30
    for phase in ("Ready", "Failed", "Rejected"):
        assert _age(registry, phase) is None
    population.observe("a", "Ready", "candidate")
    assert _age(registry, "Signing") is None  # nobody waits: no series, not a 0
    assert (
        registry.get_sample_value("studbook_descendants", {"phase": "Ready", "stage": "candidate"})
        == 2
    )

    population.observe("d", "Pending", None)
    clock.now += 7
    population.forget("d")
    assert _age(registry, "Pending") is None
    # Seen again after being forgotten: a new wait, not the old one resumed.
    population.observe("d", "Pending", None)
    clock.now += 3
    assert _age(registry, "Pending") == 3
