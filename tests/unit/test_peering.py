"""Peered replicas: distinct, stable priorities from their names; only the one kopf lets act
sweeps."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
import pytest
from tests.builders import Body
from typer.testing import CliRunner

from studbook import metrics
from studbook.api.descendant import DescendantStatus
from studbook.cli import app
from studbook.controllers import peering
from studbook.controllers.descendants import Controller, Sweeper
from studbook.controllers.peering import MAX_PRIORITY, acts, derived_priority, replica_identity
from studbook.controllers.view import View

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_distinct_replicas_get_distinct_priorities_in_range() -> None:
    names = [f"studbook-operator-7d9f8c6b5-{i:05x}" for i in range(2000)]
    priorities = [derived_priority(name) for name in names]
    assert len(set(priorities)) == len(names)
    assert all(1 <= p <= MAX_PRIORITY == 2**31 - 1 for p in priorities)


def test_the_same_replica_always_gets_the_same_priority() -> None:
    assert derived_priority("studbook-operator-abc") == derived_priority("studbook-operator-abc")
    assert derived_priority("") == derived_priority("")


def test_the_pod_name_names_the_replica_else_host_and_pid() -> None:
    assert replica_identity({"POD_NAME": "studbook-operator-abc"}, "host", 7) == (
        "studbook-operator-abc"
    )
    assert replica_identity({}, "host", 7) == "host-7"
    assert replica_identity({"POD_NAME": ""}, "host", 7) == "host-7"


def _operator(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    """What ``studbook operator ARGS`` in pod ``studbook-operator-abc`` hands to kopf."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(peering, "log_peering_decisions", lambda: None)
    monkeypatch.setenv("POD_NAME", "studbook-operator-abc")
    result = CliRunner().invoke(app, ["operator", "--metrics-port", "0", *args])
    assert result.exit_code == 0, result.output
    (call,) = calls
    return call


def test_a_peered_operator_derives_its_priority_unless_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    derived = _operator(monkeypatch, "--peering", "studbook")
    assert derived["peering_name"] == "studbook" and derived["standalone"] is False
    assert derived["priority"] == derived_priority("studbook-operator-abc")
    assert _operator(monkeypatch, "--peering", "studbook", "--priority", "5")["priority"] == 5
    alone = _operator(monkeypatch)
    assert alone["standalone"] is True and alone["priority"] is None


def _record(priority: int, seen: timedelta = timedelta(0), lifetime: int = 60) -> dict[str, Any]:
    """A kopf keep-alive, last seen ``seen`` before NOW."""
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - seen).isoformat()}


def test_a_replica_acts_unless_a_live_peer_outranks_or_ties_with_it() -> None:
    mine = _record(5)
    assert acts({}, 5, NOW)
    assert acts({"me": mine}, 5, NOW)
    assert acts({"me": mine, "low": _record(3)}, 5, NOW)
    assert not acts({"me": mine, "high": _record(9)}, 5, NOW)
    assert not acts({"me": mine, "twin": _record(5)}, 5, NOW), "kopf pauses both of a tie"
    expired = _record(9, seen=timedelta(seconds=61))
    assert acts({"me": mine, "gone": expired}, 5, NOW)


class _Recorder:
    def __init__(self, due: Collection[str]) -> None:
        self.seen: list[str] = []
        self.due = due

    def reconcile(self, body: dict[str, Any], view: View) -> None:
        self.seen.append(body["metadata"]["name"])

    def sweep_due(self, namespace: str, name: str, interval: float) -> bool:
        return name in self.due

    def done(self, body: dict[str, Any]) -> bool:
        return bool(body["status"]["phase"] == "Ready")


def _sweep(acting: Any, due: Collection[str] = ("x", "y", "done")) -> list[str]:
    def body(name: str, phase: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": phase}}

    descendants = {
        ("a", "x"): [body("x", "Breeding")],
        ("a", "done"): [body("done", "Ready")],
        ("b", "y"): [body("y", "Pending")],
    }
    recorder = _Recorder(due)
    sweeper = Sweeper(cast(Controller, recorder), 20.0, acting=acting)
    sweeper.sweep(View(policies={}, suites={}, descendants=descendants, jobs={}))
    return sorted(recorder.seen)


def test_the_sweeper_acts_only_where_the_replica_may() -> None:
    def only_a(namespaces: Collection[str]) -> set[str]:
        return {n for n in namespaces if n == "a"}

    def unreadable(namespaces: Collection[str]) -> set[str]:
        raise ConnectionError("API server unreachable")

    assert _sweep(None) == ["x", "y"]
    assert _sweep(only_a) == ["x"]
    assert _sweep(unreadable) == []


def test_the_sweeper_looks_only_at_what_is_due() -> None:
    assert _sweep(None, due={"y"}) == ["y"]


def _counted(phase: str) -> float:
    return sum(
        sample.value
        for family in metrics.POPULATION.collect()
        for sample in family.samples
        if sample.labels["phase"] == phase
    )


def test_a_descendant_is_due_for_a_sweep_once_looked_at_and_not_lately() -> None:
    # A Descendant whose status is final and up to date: reconciling it writes nothing.
    status = DescendantStatus(phase="Rejected", observed_generation=1).to_wire()
    rejected = Body.of("lora-specialist").set("metadata.namespace", "a").set("metadata.name", "x")
    rejected.set("metadata.generation", 1).set("metadata.uid", "uid-of-x").set("status", status)
    controller = Controller(api=cast(Any, None), settings=cast(Any, None), post_event=print)
    view = View(policies={}, suites={}, descendants={}, jobs={})
    before = _counted("Rejected")
    # Never looked at: an event handler has it coming.
    assert not controller.sweep_due("a", "x", 20.0)
    controller.reconcile(rejected.manifest, view)
    assert not controller.sweep_due("a", "x", 20.0), "just looked at"
    assert controller.sweep_due("a", "x", 0.0)
    assert not controller.sweep_due("a", "y", 0.0)
    # Not parsed, yet counted (once): an operator start lists every finished Descendant.
    rejected.set("spec", {"not": "a spec"})
    controller.reconcile(rejected.manifest, view)
    assert _counted("Rejected") == before + 1
    metrics.POPULATION.forget("uid-of-x")


def test_the_operator_prints_every_loggers_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # kopf's handler failures go to a logger whose own handler only posts Kubernetes events;
    # without a handler at the root they would never be printed.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    _operator(monkeypatch)
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    record = logging.LogRecord("kopf.objects", logging.ERROR, "", 0, "failed", None, None)
    assert "ERROR kopf.objects: failed" in handler.format(record)
