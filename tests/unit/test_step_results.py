"""The operator reads a step's results only where that step's Job was told to write them."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_gates import scorecard

from studbook.api.descendant import ScorecardSummary
from studbook.api.policy import EvaluationGates
from studbook.api.task import EvaluateResultFile, result_uri, scorecard_uri
from studbook.artifacts.results import write_result
from studbook.breeding.flow import JobObservation
from studbook.local.steps import step_results

JOBS = {("evaluate", 1): JobObservation("evaluate", 1, "d-evaluate-1", "Succeeded")}


def _evaluated(store: str, name: str, card_uri: str) -> None:
    """An evaluate result of ``name``'s attempt 1 naming ``card_uri`` as its scorecard."""
    summary = ScorecardSummary(
        suite="sentiment-topic",
        suite_version="1.0.0",
        suite_digest="sha256:" + "2" * 64,
        verdict="pass",
        uri=card_uri,
    )
    write_result(
        result_uri(store, "ns", name, "evaluate", 1), EvaluateResultFile(scorecard=summary)
    )


def _card(uri: str, verdict_metric: float) -> None:
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = [
        {"dataset": "sentiment-gate", "metric": "accuracy", "value": verdict_metric, "n": 500}
    ]
    path.write_text(scorecard(metrics=metrics).model_dump_json(by_alias=True))


def test_a_scorecard_at_the_jobs_own_location_is_gated(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    own = scorecard_uri(result_uri(store, "ns", "d", "evaluate", 1))
    _card(own, 0.5)
    _evaluated(store, "d", own)
    gates = EvaluationGates(min_metrics={"sentiment-gate/accuracy": 0.8})
    _, evaluation, _ = step_results(store, "ns", "d", JOBS, gates)
    assert evaluation is not None
    assert any("sentiment-gate/accuracy" in r for r in evaluation.gate_reasons)
    # The headline is the stored card's, whatever the pod's result claimed of it.
    assert evaluation.scorecard.metrics == {"sentiment-gate/accuracy": 0.5}
    assert evaluation.scorecard.uri == own


def test_a_scorecard_the_pod_points_elsewhere_is_not_opened(tmp_path: Path) -> None:
    # A pod that evaluated a poor model points its result at another descendant's passing card.
    store = str(tmp_path / "store")
    other = scorecard_uri(result_uri(store, "ns", "champion", "evaluate", 1))
    _card(other, 0.99)
    own = scorecard_uri(result_uri(store, "ns", "d", "evaluate", 1))
    _card(own, 0.5)
    _evaluated(store, "d", other)
    gates = EvaluationGates(min_metrics={"sentiment-gate/accuracy": 0.8})
    _, evaluation, _ = step_results(store, "ns", "d", JOBS, gates)
    assert evaluation is None


def test_a_scorecard_is_bound_to_the_jobs_location_as_the_job_sees_the_store(
    tmp_path: Path,
) -> None:
    # The chart mounts the store's volume at one path in the operator and another in Jobs: the
    # pod names its card in its own terms, and the operator opens that location in its own.
    store, job_store = str(tmp_path / "store"), "/work"
    own_here = scorecard_uri(result_uri(store, "ns", "d", "evaluate", 1))
    own_in_job = scorecard_uri(result_uri(job_store, "ns", "d", "evaluate", 1))
    _card(own_here, 0.5)
    _evaluated(store, "d", own_in_job)

    def reachable(uri: str) -> str:
        return store + uri.removeprefix(job_store)

    gates = EvaluationGates(min_metrics={"sentiment-gate/accuracy": 0.8})
    _, evaluation, _ = step_results(store, "ns", "d", JOBS, gates, reachable, job_store)
    assert evaluation is not None
    assert evaluation.scorecard.metrics == {"sentiment-gate/accuracy": 0.5}
    assert evaluation.scorecard.uri == own_in_job
    # In the operator's terms, the same card is not where the Job was told to write.
    _evaluated(store, "d", own_here)
    _, refused, _ = step_results(store, "ns", "d", JOBS, gates, reachable, job_store)
    assert refused is None
