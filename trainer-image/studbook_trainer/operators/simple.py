"""``import``, ``finetune`` and ``merge``: founders, full fine-tuning and weight merges."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from studbook_trainer.merge import MergeParent, MergePlan, merge
from studbook_trainer.operators.base import Operator, OperatorError, RunContext, log, register
from studbook_trainer.operators.training import (
    TrainPlan,
    ensure_pad_token,
    evaluate,
    load_rows,
    save_model,
    train_loop,
)


def directory_id(root: Path) -> str:
    """The Studbook artifact id of a local directory's files."""
    from studbook.artifacts.digest import artifact_id, hash_files, local_range_reader, scan_local

    hashed = hash_files(scan_local(root), local_range_reader(root))
    return artifact_id(h.entry for h in hashed)


@dataclass(frozen=True)
class ImportPlan:
    """A founder from outside: the files at ``uri`` must hash to ``digest``."""

    uri: str
    digest: str | None


class ImportOperator(Operator):
    """Copy a model from a local path or an fsspec URI and check its expected digest."""

    name = "import"
    reference = "https://filesystem-spec.readthedocs.io/"
    plan_type = ImportPlan

    def run(self, plan: ImportPlan, ctx: RunContext) -> dict[str, Any]:
        """Fetch, then verify; a digest mismatch refuses the import."""
        import fsspec

        uri = plan.uri
        fs, _, paths = fsspec.get_fs_token_paths(uri)
        source = paths[0]
        if not fs.exists(source):
            raise OperatorError(f"import source {uri!r} does not exist")
        if fs.isdir(source):
            fs.get(source.rstrip("/") + "/", str(ctx.out_dir) + "/", recursive=True)
        else:
            fs.get(source, str(ctx.out_dir / Path(source).name))
        actual = directory_id(ctx.out_dir)
        if plan.digest is not None and actual != plan.digest:
            raise OperatorError(
                f"import of {uri!r}: files hash to {actual}, expected {plan.digest}"
            )
        files = sorted(p.name for p in ctx.out_dir.rglob("*") if p.is_file())
        log.info("imported %d files from %s (%s)", len(files), uri, actual)
        return {"digest": actual, "files": len(files)}


@dataclass(frozen=True)
class FinetunePlan(TrainPlan):
    """Full fine-tuning of the (single) parent."""


def load_for_task(path: Path, task: str, num_labels: int | None, device: Any) -> tuple[Any, Any]:
    """Model and tokenizer of a parent, with a head for the task."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(path)
    if task == "sequence-classification":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    ensure_pad_token(tokenizer, model)
    return model.to(device), tokenizer


class FinetuneOperator(Operator):
    """Train every (unfrozen) weight of the parent on the task's data."""

    name = "finetune"
    reference = "https://huggingface.co/docs/transformers/training"
    plan_type = FinetunePlan

    def run(self, plan: FinetunePlan, ctx: RunContext) -> dict[str, Any]:
        """Fine-tune, evaluate on the training data, save."""
        plan.check()
        if len(ctx.parents) != 1:
            raise OperatorError("finetune takes exactly one parent")
        device = ctx.torch_device()
        rows = load_rows(ctx, plan.datasets, plan.task)
        model, tokenizer = load_for_task(ctx.parents[0].path, plan.task, plan.num_labels, device)
        frozen = 0
        for pname, param in model.named_parameters():
            if any(fnmatchcase(pname, pat) for pat in plan.freeze):
                param.requires_grad_(False)
                frozen += 1
        before = evaluate(model, tokenizer, rows, plan.task, device, plan.max_seq_length)
        losses = train_loop(model, plan, rows, tokenizer, device)
        after = evaluate(model, tokenizer, rows, plan.task, device, plan.max_seq_length)
        save_model(model, tokenizer, ctx.out_dir)
        return {
            "frozen": frozen,
            "losses": [losses[0], losses[-1]],
            "before": before,
            "after": after,
        }


@dataclass(frozen=True)
class MergeOperatorPlan:
    """A merge: the engine's plan with parents still by name."""

    method: str
    weights: dict[str, float]
    base: str | None = None
    params: dict[str, Any] | None = None
    overrides: tuple[Any, ...] = ()
    parent_params: dict[str, dict[str, Any]] | None = None
    dtype: str | None = None
    seed: int = 0


class MergeOperator(Operator):
    """Weight-space merge of compatible parents with the streaming engine."""

    name = "merge"
    reference = "https://arxiv.org/abs/2403.13257"
    plan_type = MergeOperatorPlan

    def run(self, plan: MergeOperatorPlan, ctx: RunContext) -> dict[str, Any]:
        """Build the engine plan from named parents and merge."""
        unknown = set(plan.weights) - {p.name for p in ctx.parents}
        if unknown:
            raise OperatorError(f"weights name unknown parents: {sorted(unknown)}")
        base = ctx.parent(plan.base) if plan.base else None
        parents = []
        for p in ctx.parents:
            if base is not None and p.name == base.name:
                continue
            params: dict[str, Any] = dict((plan.parent_params or {}).get(p.name, {}))
            if p.name in plan.weights:
                params["weight"] = plan.weights[p.name]
            parents.append(MergeParent(p.name, p.path, params))
        engine_plan = MergePlan(
            method=plan.method,
            parents=tuple(parents),
            base=MergeParent(base.name, base.path) if base is not None else None,
            params=dict(plan.params or {}),
            overrides=tuple(plan.overrides),
            seed=plan.seed,
            dtype=plan.dtype,
            device=ctx.device,
        )
        return merge(engine_plan, ctx.out_dir).to_json()


for _op in (ImportOperator(), FinetuneOperator(), MergeOperator()):
    register(_op)
