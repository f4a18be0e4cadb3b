"""The pipeline's breed and evaluate steps, as the operator's Jobs and ``studbook breed`` run them.

A step reads a task of :mod:`studbook.api.task`, fetches its inputs from the artifact store
(verified against their artifact ids), runs the operator or the evaluation harness, and writes
what it made into its own output directory: the model, or the scorecard. It seals nothing and
records nothing: whoever runs the pipeline seals and judges from that directory
(:mod:`studbook.local.steps`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from studbook.api.scorecard import Scorecard
from studbook.api.task import MODEL_DIR, SCORECARD_FILE, BreedTask, EvaluateTask, ParentArtifact
from studbook.artifacts import Store
from studbook_trainer.evaluation.harness import ModelRef, Options, canonical_json, evaluate
from studbook_trainer.merge import MergeParent, MergePlan, merge
from studbook_trainer.runner import run_task
from studbook_trainer.task import TaskError, parse_task

log = logging.getLogger("studbook_trainer")


def fetch_package(store: Store, parent: ParentArtifact, scratch: Path) -> Path:
    """A verified local copy of a package's files, under ``scratch/inputs/<name>``."""
    dest = scratch / "inputs" / parent.name
    store.fetch(parent.artifact_id, dest)
    return dest


def breed(task: BreedTask) -> Path:
    """Run the operator on the parents; the model goes to ``model/`` in the step's output."""
    store = Store.open(task.store)
    output = Path(task.output) / MODEL_DIR
    with tempfile.TemporaryDirectory(prefix="studbook-breed-") as tmp:
        scratch = Path(tmp)
        parents = [
            {"name": p.name, "uri": str(fetch_package(store, p, scratch))} for p in task.parents
        ]
        trainer_task = parse_task(
            {
                "operator": task.operator.to_wire(),
                "parents": parents,
                "data": [{"name": d.name, "uri": d.uri, "digest": d.digest} for d in task.data],
                "output": str(output),
            }
        )
        run_task(trainer_task)
    log.info("bred %s into %s", task.descendant, output)
    return output


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


def evaluate_step(task: EvaluateTask, options: Options | None = None) -> Scorecard:
    """Evaluate the sealed subject against its parents; the scorecard goes to the output."""
    store = Store.open(task.store)
    with tempfile.TemporaryDirectory(prefix="studbook-evaluate-") as tmp:
        scratch = Path(tmp)

        def ref(model: ParentArtifact) -> ModelRef:
            path = fetch_package(store, model, scratch)
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
    output = Path(task.output) / SCORECARD_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(canonical_json(card))
    log.info("scored %s into %s", task.descendant, output)
    return card
