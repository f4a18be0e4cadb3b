"""The task files the pipeline's steps are given."""

from __future__ import annotations

from tests.builders import Body
from tests.manifests import example

from studbook.api import EvaluationSuite, parse_manifest
from studbook.api.common import Niche
from studbook.api.task import ParentArtifact
from studbook.breeding.tasks import evaluate_task


def _artifact(name: str) -> ParentArtifact:
    return ParentArtifact(
        name=name, artifact_id="sha256:" + "1" * 64, uri=f"/store/{name}", niche=Niche()
    )


def _suite() -> EvaluationSuite:
    suite = parse_manifest(example("suite"))
    assert isinstance(suite, EvaluationSuite)
    return suite


def test_a_merge_is_evaluated_against_the_uniform_merge_of_what_it_merged() -> None:
    ties = Body.of("ties-merge").descendant()
    parents = [_artifact(p.name) for p in ties.spec.parents]
    task = evaluate_task(ties, _artifact("subject"), parents, _suite(), "/store", "/output")
    # The base is what task vectors are taken against, not one of the merged models.
    assert task.uniform_merge_of == ["minilm-sentiment", "minilm-topic"]


def test_other_operators_have_no_uniform_merge_baseline() -> None:
    lora = Body.of("lora-specialist").descendant()
    parents = [_artifact(p.name) for p in lora.spec.parents]
    task = evaluate_task(lora, _artifact("subject"), parents, _suite(), "/store", "/output")
    assert task.uniform_merge_of == []
