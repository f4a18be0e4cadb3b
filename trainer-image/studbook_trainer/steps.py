"""The pipeline's breed and evaluate steps, as the operator's Jobs and ``studbook breed`` run them.

A step reads a task of :mod:`studbook.api.task`, fetches its inputs from the artifact store
(verified against their artifact ids), runs the operator or the evaluation harness, and leaves
its output in the store: a sealed package, or a scorecard, plus the step's result file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import torch

from studbook.api.canonical import digest_of
from studbook.api.descendant import ArtifactStatus, LineageStatus, ResourceProfile, ScorecardSummary
from studbook.api.task import (
    IMAGE_ENV,
    BreedResultFile,
    BreedTask,
    EvaluateResultFile,
    EvaluateTask,
    ParentArtifact,
    scorecard_uri,
)
from studbook.artifacts import Lineage, Store
from studbook.artifacts.results import write_result
from studbook_trainer import __version__
from studbook_trainer.evaluation.harness import ModelRef, Options, canonical_json, evaluate
from studbook_trainer.merge import MergeParent, MergePlan, merge
from studbook_trainer.runner import run_task
from studbook_trainer.task import TaskError, parse_task

log = logging.getLogger("studbook_trainer")


def _fetch(store: Store, parent: ParentArtifact, scratch: Path) -> Path:
    """A verified local copy of a package's files."""
    dest = scratch / "inputs" / parent.name
    store.fetch(parent.artifact_id, dest)
    return dest


def breed(task: BreedTask) -> BreedResultFile:
    """Run the operator on the parents, seal the output into the store, write the result."""
    store = Store.open(task.store)
    with tempfile.TemporaryDirectory(prefix="studbook-breed-") as tmp:
        scratch = Path(tmp)
        parents = [{"name": p.name, "uri": str(_fetch(store, p, scratch))} for p in task.parents]
        output = scratch / "output"
        trainer_task = parse_task(
            {
                "operator": task.operator.to_wire(),
                "parents": parents,
                "data": [{"name": d.name, "uri": d.uri, "digest": d.digest} for d in task.data],
                "output": str(output),
            }
        )
        run_task(trainer_task)
        lineage = Lineage(
            parents=tuple(p.artifact_id for p in task.parents),
            operator=task.operator.kind,
            config_hash=digest_of(task.operator.content_config()),
            dataset_digests={d.name: d.digest for d in task.data},
            code_version=code_version(),
        )
        manifest = store.seal(output, lineage)
        created = datetime.now(UTC)
    log.info("sealed %s for %s", manifest.id, task.descendant)
    result = BreedResultFile(
        artifact=ArtifactStatus(
            id=manifest.id,
            short_id=manifest.id[7:19],
            uri=store.package_path(manifest.id),
            size_bytes=manifest.size,
        ),
        lineage=LineageStatus(
            parent_ids=list(lineage.parents),
            operator=task.operator.kind,
            config_hash=lineage.config_hash,
            data_digests=[d.digest for d in task.data],
            code_version=code_version(),
            created_at=created,
        ),
        profile=ResourceProfile(size_bytes=manifest.size),
    )
    write_result(task.result, result)
    return result


def code_version() -> str:
    """The trainer's version, with the image's digest where the Job pinned the image by one.

    A tag can be moved; a digest names exactly the code that bred an artifact.
    """
    _, at, digest = os.environ.get(IMAGE_ENV, "").partition("@")
    if at and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return f"{__version__}@{digest}"
    return __version__


def _uniform_merge(parents: list[ModelRef], names: list[str], scratch: Path) -> ModelRef | None:
    """The uniform linear merge of the named parents: a merge's simple baseline."""
    if not names:
        return None
    by_name = {p.name: p for p in parents}
    missing = sorted(set(names) - set(by_name))
    if missing:
        raise TaskError(f"uniformMergeOf names parents the task does not list: {missing}")
    out = scratch / "uniform-merge"
    plan = MergePlan(method="linear", parents=tuple(MergeParent(n, by_name[n].path) for n in names))
    merge(plan, out)
    return ModelRef("uniform-merge", out)


def evaluate_step(task: EvaluateTask, options: Options | None = None) -> EvaluateResultFile:
    """Evaluate the sealed subject against its parents, store the scorecard, write the result."""
    store = Store.open(task.store)
    with tempfile.TemporaryDirectory(prefix="studbook-evaluate-") as tmp:
        scratch = Path(tmp)

        def ref(model: ParentArtifact) -> ModelRef:
            path = _fetch(store, model, scratch)
            return ModelRef(model.name, path, model.artifact_id, tuple(model.niche.taxonomy))

        parents = [ref(p) for p in task.parents]
        card = evaluate(
            task.suite,
            ref(task.subject),
            suite_name=task.suite_name,
            suite_digest_value=task.suite_digest,
            parents=parents,
            baseline=_uniform_merge(parents, task.uniform_merge_of, scratch),
            champion=ref(task.champion) if task.champion else None,
            options=options or Options(device="cuda" if torch.cuda.is_available() else "cpu"),
        )
    uri = scorecard_uri(task.result)
    with fsspec.open(uri, "wb") as handle:
        handle.write(canonical_json(card))
    summary = ScorecardSummary.of(card, uri)
    profile = None
    if card.profile is not None:
        profile = ResourceProfile(
            parameters=card.profile.parameters,
            size_bytes=card.profile.size_bytes,
            latency_ms_p50=card.profile.latency_ms_per_example,
        )
    result = EvaluateResultFile(scorecard=summary, profile=profile)
    write_result(task.result, result)
    return result
