"""The evaluation harness on real models: MiniLM specialists, their merge and their ensemble."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from studbook.api.policy import EvaluationGates
from studbook.api.scorecard import Scorecard
from studbook.api.suite import EvaluationSuiteSpec
from studbook.breeding.gates import evaluation_gate
from studbook_trainer.evaluation import (
    DataLeakError,
    DatasetDigestError,
    ModelLoadError,
    ModelRef,
    Options,
    SuiteRefusedError,
    bytes_digest,
    canonical_json,
    check_suite_for_search,
    evaluate,
    evaluate_task,
    main,
)

from . import _fixtures as fx
from .conftest import Data, Models, suite_spec

SENTIMENT = ("classification/sentiment",)
TOPIC = ("classification/topic",)


def spec(data: Data, **overrides: object) -> EvaluationSuiteSpec:
    return EvaluationSuiteSpec.model_validate(suite_spec(data, **overrides))


def test_specialist_gains_on_its_task_and_forgets_its_parents_niche(
    data: Data, models: Models
) -> None:
    suite = spec(data, objective=["sentiment-gate"])
    card = evaluate(
        suite,
        ModelRef("sentiment-from-topic", models.sentiment_from_topic, niche=SENTIMENT),
        suite_name="sentiment-topic",
        parents=[ModelRef("topic", models.topic, niche=TOPIC)],
    )
    Scorecard.model_validate(card.to_wire())  # valid on the wire
    # Calibration says which datasets lie outside the niche it declares: there it should abstain.
    outside = {c.dataset: c.outside_niche for c in card.calibration}
    assert outside["topic-gate"] is True and outside["sentiment-gate"] is False
    assert outside["mixed-holdout"] is None
    accuracy = card.metric("sentiment-gate/accuracy")
    assert accuracy is not None and accuracy.value >= 0.9
    assert accuracy.ci_low is not None and accuracy.ci_high is not None
    assert accuracy.ci_low <= accuracy.value <= accuracy.ci_high
    # Gain on its task, over its parent.
    assert card.objective is not None and card.objective.best_parent == "topic"
    assert card.objective.net_gain is not None and card.objective.net_gain >= 0.5
    # Regression on the parent's niche: the topic probe, on parent and child.
    (niche,) = card.niches
    assert (niche.probe, niche.parent, niche.metric) == ("topic", "topic", "accuracy")
    assert niche.parent_value >= 0.9
    assert niche.regression >= 0.5
    # The policy gate reads it and says why it refuses.
    gate = evaluation_gate(card, EvaluationGates(max_niche_regression=0.1, min_net_gain=0.0))
    assert not gate.passed
    assert any("niche topic of parent topic" in r for r in gate.reasons)
    # The suite's own thresholds pass.
    assert card.verdict == "pass" and card.reasons == []
    (parent,) = card.comparisons[:1]
    assert parent.role == "parent" and parent.metrics["topic-gate/accuracy"] >= 0.9


def test_merge_is_compared_with_parents_uniform_merge_and_ensemble(
    data: Data, models: Models
) -> None:
    start = time.perf_counter()
    card = evaluate(
        spec(data),
        ModelRef("task-arithmetic", models.merged),
        suite_name="sentiment-topic",
        parents=[
            ModelRef("sentiment", models.sentiment, niche=SENTIMENT),
            ModelRef("topic", models.topic, niche=TOPIC),
        ],
        baseline=ModelRef("uniform-merge", models.uniform),
    )
    print(f"merge scorecard with 4 comparisons: {time.perf_counter() - start:.1f}s")
    roles = [(c.role, c.name) for c in card.comparisons]
    assert roles == [
        ("parent", "sentiment"),
        ("parent", "topic"),
        ("baseline", "uniform-merge"),
        ("baseline", "majority-class"),
        ("ensemble", "ensemble"),
    ]
    by_name = {c.name: c.metrics for c in card.comparisons}
    keys = {"sentiment-gate/accuracy", "topic-gate/accuracy", "mixed-holdout/accuracy"}
    for name, values in by_name.items():
        assert keys <= set(values), name
        assert "sentiment-gate/latency_ms" not in values
    # Each parent is a specialist; the merge, the uniform merge and the ensemble cover both.
    assert by_name["sentiment"]["topic-gate/accuracy"] <= 0.2
    assert by_name["topic"]["sentiment-gate/accuracy"] <= 0.2
    assert by_name["majority-class"]["sentiment-gate/accuracy"] == pytest.approx(0.5)
    for name in ("uniform-merge", "ensemble"):
        assert by_name[name]["mixed-holdout/accuracy"] >= 0.8, name
    assert card.metric("mixed-holdout/accuracy").value >= 0.8  # type: ignore[union-attr]
    assert by_name["ensemble"]["sentiment-gate/size_bytes"] == 2 * card.profile.size_bytes  # type: ignore[union-attr]
    # Both parents' niches are probed on the child; the merge keeps both.
    assert [(n.probe, n.parent) for n in card.niches] == [
        ("sentiment", "sentiment"),
        ("topic", "topic"),
    ]
    assert all(n.regression <= 0.1 for n in card.niches)
    # Net gain over the best parent on the mean of both gate accuracies.
    objective = card.objective
    assert objective is not None
    assert objective.metrics == ["sentiment-gate/accuracy", "topic-gate/accuracy"]
    assert objective.net_gain is not None and objective.net_gain >= 0.3
    assert card.calibration[0].dataset == "sentiment-optimize"
    assert {c.dataset for c in card.calibration} == set(data.files)
    assert card.profile is not None and card.profile.parameters > 20_000_000
    assert card.profile.latency_ms_per_example > 0


def test_a_leaking_holdout_is_refused(data: Data, tmp_path: Path) -> None:
    # The same file under two roles: the API model refuses the suite.
    leaking = suite_spec(data)
    leaking["datasets"][3] = data.dataset("sentiment-optimize", "holdout") | {
        "name": "mixed-holdout"
    }
    with pytest.raises(ValidationError, match="digest appears under two roles"):
        EvaluationSuiteSpec.model_validate(leaking)
    # A search that would optimize on gate or holdout data is refused.
    suite = spec(data)
    check_suite_for_search(suite, ["sentiment-optimize"])
    with pytest.raises(SuiteRefusedError) as refused:
        check_suite_for_search(suite, ["sentiment-optimize", "mixed-holdout", "topic-gate"])
    assert "mixed-holdout: a holdout dataset" in str(refused.value)
    assert "topic-gate: a gate dataset" in str(refused.value)
    # Held-out examples copied into the optimize file (so the digests differ) are found too,
    # before any model is loaded.
    copied = fx.write_jsonl(
        tmp_path / "opt.jsonl",
        [json.loads(x) for x in data.files["sentiment-optimize"].read_text().splitlines()]
        + [json.loads(x) for x in data.files["mixed-holdout"].read_text().splitlines()[:3]],
    )
    datasets = suite_spec(data)["datasets"]
    datasets[0] = datasets[0] | {"uri": str(copied), "digest": bytes_digest(copied.read_bytes())}
    with pytest.raises(DataLeakError, match="3 example\\(s\\) of holdout dataset mixed-holdout"):
        evaluate(
            spec(data, datasets=datasets),
            ModelRef("absent", tmp_path / "no-such-model"),
            suite_name="sentiment-topic",
        )


def test_a_dataset_whose_digest_differs_is_refused_before_any_model_is_loaded(
    data: Data, tmp_path: Path
) -> None:
    absent = ModelRef("absent", tmp_path / "no-such-model")
    datasets = suite_spec(data)["datasets"]
    datasets[2] = datasets[2] | {"digest": "sha256:" + "0" * 64}
    with pytest.raises(DatasetDigestError, match=r"topic-gate .* hashes to sha256:"):
        evaluate(spec(data, datasets=datasets), absent, suite_name="sentiment-topic")
    # With the right digests the harness goes on to the model, which is not there.
    with pytest.raises(ModelLoadError, match="not a model directory"):
        evaluate(spec(data), absent, suite_name="sentiment-topic")


def test_an_encoder_is_refused_when_the_suite_gives_no_probe_data(data: Data) -> None:
    # The fixture's labels are names: no class indices to fit a probe's head with.
    with pytest.raises(
        ModelLoadError, match=r"lacks weights a classifier needs: classifier.*probe"
    ):
        evaluate(spec(data), ModelRef("minilm", fx.minilm_dir()), suite_name="sentiment-topic")


def test_an_encoder_is_scored_through_a_linear_probe_on_the_optimize_data(
    data: Data, tmp_path: Path
) -> None:
    datasets = []
    for entry in suite_spec(data)["datasets"]:
        rows = [json.loads(line) for line in data.files[entry["name"]].read_text().splitlines()]
        indexed = fx.write_jsonl(
            tmp_path / f"{entry['name']}.jsonl",
            [r | {"label": fx.LABELS.index(r["label"])} for r in rows],
        )
        datasets.append(
            entry | {"uri": indexed.as_uri(), "digest": bytes_digest(indexed.read_bytes())}
        )
    suite = spec(data, datasets=datasets)
    encoder = ModelRef("minilm", fx.minilm_dir())
    exact = Options(measure_latency=False)
    card = evaluate(suite, encoder, suite_name="sentiment-topic", options=exact)
    assert card.probed == ["minilm"]
    values = {m.key: m.value for m in card.metrics}
    # Only sentiment has optimize data: the probe learns that niche and never the topics.
    assert values["sentiment-gate/accuracy"] > 0.8 and values["topic-gate/accuracy"] < 0.2
    again = evaluate(suite, encoder, suite_name="sentiment-topic", options=exact)
    assert canonical_json(again) == canonical_json(card)


def limited(data: Data, limit: int, **overrides: object) -> EvaluationSuiteSpec:
    """The suite on the first ``limit`` examples of each dataset (quicker tests)."""
    datasets = [d | {"limit": limit} for d in suite_spec(data)["datasets"]]
    return spec(data, datasets=datasets, **overrides)


def test_same_model_suite_and_seed_give_the_same_scorecard(data: Data, models: Models) -> None:
    parents = [
        ModelRef("sentiment", models.sentiment, niche=SENTIMENT),
        ModelRef("topic", models.topic, niche=TOPIC),
    ]

    def run(options: Options, seed: int = 7, with_parents: bool = True) -> Scorecard:
        return evaluate(
            limited(data, 16, seed=seed),
            ModelRef("task-arithmetic", models.merged),
            suite_name="sentiment-topic",
            parents=parents if with_parents else (),
            options=options,
        )

    exact = Options(measure_latency=False)
    first, second = run(exact), run(exact)
    assert canonical_json(first) == canonical_json(second)
    assert first.profile is None and first.metric("sentiment-gate/latency_ms") is None
    # With latency measured, latency is the only thing that differs.
    alone = run(exact, with_parents=False).to_wire()
    timed = run(Options(), with_parents=False).to_wire()
    assert timed.pop("profile")["latencyMsPerExample"] > 0
    timed["metrics"] = [m for m in timed["metrics"] if m["metric"] != "latency_ms"]
    assert timed == alone
    # Another seed draws other bootstrap resamples, and says so.
    other = run(exact, seed=8, with_parents=False)
    assert other.seed == 8
    assert other.suite.digest != first.suite.digest
    assert [m.value for m in other.metrics] == [m.value for m in first.metrics]
    assert [m.ci_low for m in other.metrics] != [m.ci_low for m in first.metrics]


def test_task_file_and_command_line(data: Data, models: Models, tmp_path: Path) -> None:
    task = {
        "suite": {"name": "sentiment-topic", "spec": limited(data, 16).to_wire()},
        "subject": {"name": "sentiment", "path": str(models.sentiment)},
        "parents": [
            {
                "name": "base",
                "path": str(models.base),
                "niche": {"taxonomy": ["classification"]},
            }
        ],
        "optimizeOn": ["sentiment-optimize"],
        "options": {"batchSize": 32, "threads": 2, "measureLatency": False},
    }
    card = evaluate_task(task)
    # A niche taxonomy prefix selects every probe below it.
    assert [n.probe for n in card.niches] == ["sentiment", "topic"]
    assert card.objective is not None and card.objective.best_parent == "base"
    (tmp_path / "task.json").write_text(json.dumps(task))
    out = tmp_path / "scorecard.json"
    assert main(["--task", str(tmp_path / "task.json"), "--out", str(out)]) == 0
    assert out.read_bytes() == canonical_json(card)
    Scorecard.model_validate(json.loads(out.read_bytes()))
    # A search that asks to tune on held-out data is refused with a reason.
    task["optimizeOn"] = ["mixed-holdout"]
    (tmp_path / "bad.json").write_text(json.dumps(task))
    assert main(["--task", str(tmp_path / "bad.json")]) == 2


def test_thresholds_fail_with_reasons(data: Data, models: Models) -> None:
    suite = limited(
        data,
        24,
        thresholds=[
            {"metric": "accuracy", "dataset": "topic-gate", "min": 0.7},
            {"metric": "macro_f1", "dataset": "mixed-holdout", "min": 0.9},
        ],
    )
    card = evaluate(
        suite,
        ModelRef("sentiment", models.sentiment),
        suite_name="sentiment-topic",
        options=Options(measure_latency=False),
    )
    assert card.verdict == "fail"
    assert card.reasons[0].startswith("topic-gate/accuracy = 0 is below the suite minimum 0.7")
    assert card.reasons[1].startswith("mixed-holdout/macro_f1 = ")
    holdout = card.metric("mixed-holdout/macro_f1")
    assert holdout is not None and holdout.direction == "maximize"
    # Abstention: out of its niche the sentiment specialist is still confident (a finding).
    rates = {c.dataset: c.abstention_rate for c in card.calibration}
    assert all(r is not None and 0.0 <= r <= 1.0 for r in rates.values())


def test_minilm_base_scores_a_thousand_examples_in_seconds(models: Models, tmp_path: Path) -> None:
    records = fx.examples("sentiment", 500, seed=11) + fx.examples("topic", 500, seed=11)
    path = fx.write_jsonl(tmp_path / "thousand.jsonl", records)
    suite = EvaluationSuiteSpec.model_validate(
        {
            "version": "1.0.0",
            "datasets": [
                {
                    "name": "thousand",
                    "uri": str(path),
                    "digest": bytes_digest(path.read_bytes()),
                    "role": "gate",
                    "task": "classification",
                }
            ],
            "metrics": [
                {"name": "accuracy", "dataset": "thousand", "direction": "maximize"},
                {"name": "macro_f1", "dataset": "thousand", "direction": "maximize"},
                {"name": "ece", "dataset": "thousand", "direction": "minimize"},
            ],
            "abstainBelow": 0.5,
        }
    )
    start = time.perf_counter()
    card = evaluate(suite, ModelRef("base", models.base), suite_name="thousand")
    elapsed = time.perf_counter() - start
    assert card.metric("thousand/accuracy").n == 1000  # type: ignore[union-attr]
    print(
        f"\nMiniLM base, 1,000-example suite, 1,000 bootstrap resamples: {elapsed:.2f}s"
        f" ({1000 / elapsed:.0f} examples/s; forward {card.profile.latency_ms_per_example:.2f}"  # type: ignore[union-attr]
        " ms/example)"
    )


def test_the_trainer_command_line_evaluates(data: Data, models: Models, tmp_path: Path) -> None:
    trainer = pytest.importorskip("studbook_trainer.__main__")
    task = {
        "suite": {"name": "sentiment-topic", "spec": limited(data, 8).to_wire()},
        "subject": {"name": "sentiment", "path": str(models.sentiment)},
        "options": {"measureLatency": False},
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    out = tmp_path / "scorecard.json"
    argv = ["evaluate", "--task", str(tmp_path / "task.json"), "--out", str(out)]
    assert trainer.main(argv) == 0
    assert json.loads(out.read_bytes())["subject"].startswith("sha256:")
    assert out.read_bytes() == canonical_json(evaluate_task(task))
    task["suite"]["spec"]["datasets"][0]["digest"] = "sha256:" + "1" * 64
    (tmp_path / "task.json").write_text(json.dumps(task))
    assert trainer.main(argv) == 2
