"""The pipeline's steps on a real model: import a founder and a specialist (breed), evaluate the
specialist against its parent, sign both: the path every Descendant takes, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.keys import ec_key

from studbook.api.common import Compatibility, Niche
from studbook.api.operators import OperatorSpec
from studbook.api.scorecard import Scorecard
from studbook.api.suite import EvaluationSuiteSpec
from studbook.api.task import BreedTask, EvaluateTask, ParentArtifact, SignTask
from studbook.artifacts import Store, TrustedKey, TrustPolicy, Verifier
from studbook.local.steps import run_sign, signer_from_dir
from studbook_trainer.operators.simple import directory_id
from studbook_trainer.steps import breed, evaluate_step

from .conftest import Data, Models, suite_spec

COMPAT = Compatibility(
    base_family="minilm-l6",
    architecture="BertForSequenceClassification",
    tokenizer_id="bert-base-uncased-wordpiece-30522",
)


def _import(store: Path, source: Path, name: str) -> BreedTask:
    operator = OperatorSpec.model_validate(
        {"kind": "import", "import": {"uri": str(source), "digest": directory_id(source)}}
    )
    return BreedTask(
        descendant=f"ml/{name}",
        operator=operator,
        compatibility=COMPAT,
        store=str(store),
        result=str(store / "runs" / "ml" / name / "breed-1.json"),
    )


def test_breed_evaluate_sign_a_specialist_against_its_parent(
    tmp_path: Path, models: Models, data: Data
) -> None:
    store_dir = tmp_path / "store"
    base = breed(_import(store_dir, models.base, "base"))
    specialist = breed(_import(store_dir, models.sentiment, "sentiment"))
    store = Store.open(store_dir)
    assert store.exists(base.artifact.id) and store.exists(specialist.artifact.id)
    assert store.lineage(specialist.artifact.id).operator == "import"
    assert (
        json.loads(Path(store_dir / "runs/ml/sentiment/breed-1.json").read_text())["artifact"]["id"]
        == specialist.artifact.id
    )

    def artifact(name: str, result_id: str, taxonomy: list[str]) -> ParentArtifact:
        return ParentArtifact(
            name=name,
            artifact_id=result_id,
            uri=store.package_path(result_id),
            niche=Niche(taxonomy=taxonomy),
        )

    suite = EvaluationSuiteSpec.model_validate_json(json.dumps(suite_spec(data)))
    task = EvaluateTask(
        descendant="ml/sentiment",
        subject=artifact("sentiment", specialist.artifact.id, ["classification/sentiment"]),
        parents=[artifact("base", base.artifact.id, ["classification/topic"])],
        suite_name="sentiment-topic",
        suite_digest="sha256:" + "5" * 64,
        suite=suite,
        store=str(store_dir),
        result=str(store_dir / "runs/ml/sentiment/evaluate-1.json"),
    )
    evaluated = evaluate_step(task)
    card = Scorecard.model_validate_json(Path(str(evaluated.scorecard.uri)).read_bytes())
    assert card.subject == specialist.artifact.id
    assert evaluated.scorecard.metrics["sentiment-gate/accuracy"] > 0.8
    assert {c.name for c in card.comparisons} >= {"base", "majority-class"}
    assert evaluated.scorecard.net_gain is not None and evaluated.scorecard.net_gain > 0
    # The fitness a search ranks by is the suite's objective: the mean of its objective metrics.
    assert card.objective is not None and card.objective.metrics == [
        "sentiment-gate/accuracy",
        "topic-gate/accuracy",
    ]
    assert evaluated.scorecard.fitness == card.objective.value
    values = {m.key: m.value for m in card.metrics}
    mean = (values["sentiment-gate/accuracy"] + values["topic-gate/accuracy"]) / 2
    assert card.objective.value == pytest.approx(mean)

    public = ec_key(tmp_path / "signing" / "key.pem").encode()
    signer, identity = signer_from_dir(tmp_path / "signing")
    run_sign(
        SignTask(
            descendant="ml/sentiment",
            artifact_id=specialist.artifact.id,
            scorecard_uri=str(evaluated.scorecard.uri),
            store=str(store_dir),
            result=str(store_dir / "runs/ml/sentiment/sign-1.json"),
        ),
        signer,
        identity,
    )
    trust = TrustPolicy(signers=(TrustedKey(public_key=public),), check_parents=False)
    verifier = Verifier(store, trust)
    assert verifier.verify(specialist.artifact.id).id == specialist.artifact.id
    (scorecard,) = verifier.verify_scorecards(specialist.artifact.id)
    assert scorecard is not None
