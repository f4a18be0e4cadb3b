"""The task files of a descendant's steps, built from its spec and what its parents are.

Shared by the operator (which hands them to Jobs in a pod annotation) and ``studbook breed`` (which
runs them in local processes), so both run the same steps on the same inputs.
"""

from __future__ import annotations

from studbook.api.canonical import digest_of
from studbook.api.descendant import Descendant
from studbook.api.suite import EvaluationSuite
from studbook.api.task import BreedTask, EvaluateTask, ParentArtifact, SignTask


def _key(descendant: Descendant) -> str:
    return f"{descendant.metadata.namespace or 'default'}/{descendant.metadata.name}"


def breed_task(
    descendant: Descendant, parents: list[ParentArtifact], store: str, output: str
) -> BreedTask:
    """The breed step: run the operator on the parents, the model into ``output``."""
    spec = descendant.spec
    return BreedTask(
        descendant=_key(descendant),
        operator=spec.operator,
        parents=parents,
        data=spec.data,
        compatibility=spec.compatibility,
        store=store,
        output=output,
        origin=spec.origin,
    )


def evaluate_task(
    descendant: Descendant,
    subject: ParentArtifact,
    parents: list[ParentArtifact],
    suite: EvaluationSuite,
    store: str,
    output: str,
    champion: ParentArtifact | None = None,
) -> EvaluateTask:
    """The evaluate step: score the sealed artifact against its parents, into ``output``.

    A merge is also scored against the uniform linear merge of the parents it merged.
    """
    merge = descendant.spec.operator.merge
    merged = [p.name for p in parents if merge is not None and p.name != merge.base]
    return EvaluateTask(
        descendant=_key(descendant),
        subject=subject,
        parents=parents,
        champion=champion,
        uniform_merge_of=merged if len(merged) >= 2 else [],
        suite_name=suite.metadata.name,
        suite_digest=digest_of(suite.spec),
        suite=suite.spec,
        store=store,
        output=output,
    )


def sign_task(
    descendant: Descendant, artifact_id: str, scorecard_uri: str, store: str, record: str
) -> SignTask:
    """The sign step: re-hash the artifact, then sign it and its scorecard.

    ``record`` is where the pipeline records it (``studbook.api.task.record_uri``).
    """
    return SignTask(
        descendant=_key(descendant),
        artifact_id=artifact_id,
        scorecard_uri=scorecard_uri,
        store=store,
        result=record,
    )
