"""A BreedingRun's plan around its search: the id of its search, the layer count of its parents,
its status as the search stands, and how the report shows a run (without a model: a search told
made-up scores)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from tests.builders import Body

from studbook.api import Descendant, EvaluationSuite, parse_manifest
from studbook.api.descendant import DescendantStatus
from studbook.api.run import BreedingRun
from studbook.api.scorecard import Scorecard
from studbook.breeding.runs import descendant_of, layer_count, run_id, run_status
from studbook.breeding.search import Failure, Scores, Search
from studbook.local.report import (
    Entry,
    Report,
    RunEntry,
    gaps,
    pareto_svg,
    recipe_yaml,
    to_html,
    to_markdown,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OBJECTIVES = ("sentiment-optimize/accuracy", "topic-optimize/accuracy")


def _run(**budget: int) -> BreedingRun:
    body = Body.of("breeding-run").set("spec.budget", {"maxTrials": 4, "population": 2, **budget})
    return body.run()


def _suite() -> EvaluationSuite:
    suite = parse_manifest(Body.of("suite").manifest)
    assert isinstance(suite, EvaluationSuite)
    return suite


def test_the_search_id_leaves_out_the_budget_and_counts_parents_and_suite() -> None:
    suite = _suite()
    ids = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    first = run_id(_run(), ids, suite)
    assert first == run_id(_run(maxTrials=40, parallelism=3), ids, suite)
    assert len(first) == 32 and first.isalnum()
    assert first != run_id(_run(), list(reversed(ids)), suite)
    other = (
        Body.of("breeding-run")
        .set("spec.seed", 7)
        .set("spec.budget", {"maxTrials": 4, "population": 2})
    )
    assert first != run_id(other.run(), ids, suite)
    changed = suite.model_copy(update={"spec": suite.spec.model_copy(update={"seed": 99})})
    assert first != run_id(_run(), ids, changed)


def test_the_layer_count_comes_from_a_model_configuration() -> None:
    assert layer_count({"num_hidden_layers": 6}) == 6
    assert layer_count({"n_layer": 2, "vocab_size": 9}) == 2
    assert layer_count({"num_hidden_layers": True}) is None
    assert layer_count({"hidden_size": 384}) is None


def _searched() -> tuple[BreedingRun, Search]:
    """Four trials: two on the front (the second fittest), one dominated, one failed."""
    run = _run()
    search = Search(run.spec, num_layers=6)
    told: list[Scores | Failure] = [
        Scores(dict(zip(OBJECTIVES, (0.9, 0.72), strict=True))),
        Scores(dict(zip(OBJECTIVES, (0.75, 0.88), strict=True))),
        Scores(dict(zip(OBJECTIVES, (0.72, 0.71), strict=True))),
        Failure("out of memory"),
    ]
    for result in told:
        (candidate,) = search.ask(1)
        search.tell(candidate.number, result)
    return run, search


def test_the_status_names_the_descendants_and_why_the_search_stopped() -> None:
    run, search = _searched()
    decision = search.decide()
    assert decision.stop
    status = run_status(search, decision, {1: "search-t1"}, "store/ledger.json", 12.0, NOW)
    assert status.phase == "Succeeded" and status.message == "all 4 trials done"
    assert (status.trials_done, status.trials_failed, status.trials_running) == (3, 1, 0)
    assert [p.trial for p in status.pareto_front] == [1, 0]  # fittest first
    assert status.best is not None and status.best.trial == 1
    assert status.best.descendant == "search-t1" and status.pareto_front[1].descendant is None
    assert len(status.history) == 2 and status.ledger_uri == "store/ledger.json"
    complete = next(c for c in status.conditions if c.type == "Complete")
    assert (complete.status, complete.reason) == ("True", "BudgetSpent")
    running = run_status(Search(run.spec, 6), Search(run.spec, 6).decide(), {}, "l", 0.0, NOW)
    assert running.phase == "Running" and running.conditions[0].type == "Progressing"


def _scorecard(sentiment: float, topic: float) -> Scorecard:
    metric = {"direction": "maximize", "metric": "accuracy", "n": 48}
    return Scorecard.model_validate(
        {
            "subject": "sha256:" + "c" * 64,
            "suite": {
                "name": "sentiment-topic",
                "version": "1.0.0",
                "digest": "sha256:" + "d" * 64,
            },
            "metrics": [
                {**metric, "dataset": "sentiment-gate", "value": sentiment},
                {**metric, "dataset": "topic-gate", "value": topic},
            ],
            "verdict": "pass",
            "seed": 7,
        }
    )


def test_the_report_plots_the_front_shows_the_gap_and_writes_the_recipe(tmp_path: Path) -> None:
    run, search = _searched()
    best = search.ledger().trials[1]
    descendant = descendant_of(run, best, {"minilm-base": "sha256:" + "a" * 64})
    status = run_status(search, search.decide(), {1: descendant.metadata.name}, "l", 1.0, NOW)
    entry = RunEntry(run.metadata.name, status, search.ledger(), descendant)
    card = _scorecard(0.5, 0.93)
    ready = DescendantStatus(phase="Ready")
    report = Report(tmp_path, (Entry(descendant.metadata.name, ready, (), card),), (entry,))
    svg = pareto_svg(entry)
    assert svg.count('class="trial front"') == 2 and svg.count('class="trial"') == 1
    assert svg.count('class="best"') == 1, "failed trials are not drawn"
    found = {(g.objective, g.gate): g for g in gaps(report, entry)}
    sentiment = found[("sentiment-optimize/accuracy", "sentiment-gate")]
    assert sentiment.optimize == 0.75 and sentiment.gate_value == 0.5
    assert abs((sentiment.gap or 0.0) - 0.25) < 1e-9, "worse on gate data: a positive gap"
    topic = found[("topic-optimize/accuracy", "topic-gate")]
    assert abs((topic.gap or 0.0) + 0.05) < 1e-9
    text = recipe_yaml(entry)
    assert text is not None and text.startswith("# The best recipe of BreedingRun")
    applied = parse_manifest(yaml.safe_load(text))
    assert isinstance(applied, Descendant) and applied.spec.origin is None
    assert applied.metadata.namespace is None and not applied.metadata.labels
    assert applied.spec.operator.merge == best.recipe
    html = to_html(report)
    assert f'id="run-{run.metadata.name}"' in html and "+0.250" in html
    assert f"]({run.metadata.name}-best.yaml)" in to_markdown(report)
