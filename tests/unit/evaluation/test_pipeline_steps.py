"""The pipeline's steps on a real model: import a founder and a specialist (breed, then sealed by
the trusted half), evaluate the specialist against its parent, sign both: the path every
Descendant takes, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.keys import ec_key

from studbook.api.common import Compatibility, Niche
from studbook.api.descendant import ScorecardSummary
from studbook.api.operators import OperatorSpec
from studbook.api.scorecard import Scorecard
from studbook.api.suite import EvaluationSuiteSpec
from studbook.api.task import BreedTask, EvaluateTask, ParentArtifact, SignTask
from studbook.artifacts import Store, TrustedKey, TrustPolicy, Verifier
from studbook.local.steps import discard_output, run_sign, seal_output, signer_from_dir
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
        output=str(store / "outputs" / f"breed-{name}"),
    )


def _bred(store: Path, source: Path, name: str) -> str:
    """Breed (untrusted) into the step's output, then seal it (trusted): the artifact id."""
    task = _import(store, source, name)
    made = breed(task)
    assert made == Path(task.output) / "model" and (made / "config.json").exists()
    sealed = seal_output(Store.open(store), task, task.output, None)
    assert Store.open(store).exists(sealed.artifact.id)
    discard_output(task.output)
    assert not made.exists(), "the sealed copy is the one that counts"
    return sealed.artifact.id


def test_breed_evaluate_sign_a_specialist_against_its_parent(
    tmp_path: Path, models: Models, data: Data
) -> None:
    store_dir = tmp_path / "store"
    base = _bred(store_dir, models.base, "base")
    specialist = _bred(store_dir, models.sentiment, "sentiment")
    store = Store.open(store_dir)
    assert store.exists(base) and store.exists(specialist)
    assert store.lineage(specialist).operator == "import"

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
        subject=artifact("sentiment", specialist, ["classification/sentiment"]),
        parents=[artifact("base", base, ["classification/topic"])],
        suite_name="sentiment-topic",
        suite_digest="sha256:" + "5" * 64,
        suite=suite,
        store=str(store_dir),
        output=str(store_dir / "outputs" / "evaluate-sentiment"),
    )
    card = evaluate_step(task)
    written = Path(task.output) / "scorecard.json"
    assert Scorecard.model_validate_json(written.read_bytes()) == card
    evaluated = ScorecardSummary.of(card, str(written))
    assert card.subject == specialist
    assert evaluated.metrics["sentiment-gate/accuracy"] > 0.8
    assert {c.name for c in card.comparisons} >= {"base", "majority-class"}
    assert evaluated.net_gain is not None and evaluated.net_gain > 0
    # The fitness a search ranks by is the suite's objective: the mean of its objective metrics.
    assert card.objective is not None and card.objective.metrics == [
        "sentiment-gate/accuracy",
        "topic-gate/accuracy",
    ]
    assert evaluated.fitness == card.objective.value
    values = {m.key: m.value for m in card.metrics}
    mean = (values["sentiment-gate/accuracy"] + values["topic-gate/accuracy"]) / 2
    assert card.objective.value == pytest.approx(mean)

    public = ec_key(tmp_path / "signing" / "key.pem").encode()
    signer, identity = signer_from_dir(tmp_path / "signing")
    run_sign(
        SignTask(
            descendant="ml/sentiment",
            artifact_id=specialist,
            scorecard_uri=str(written),
            store=str(store_dir),
            result=str(store_dir / "runs/ml/sentiment/sign-1.json"),
        ),
        signer,
        identity,
    )
    trust = TrustPolicy(signers=(TrustedKey(public_key=public),), check_parents=False)
    verifier = Verifier(store, trust)
    assert verifier.verify(specialist).id == specialist
    (scorecard,) = verifier.verify_scorecards(specialist)
    assert scorecard is not None
