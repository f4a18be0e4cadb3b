"""``import``, ``finetune`` and ``merge``: founders, full fine-tuning and weight merges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any, Final

from studbook.artifacts.digest import check_package_path
from studbook.artifacts.errors import PackageFormatError
from studbook_trainer.merge import MergeParent, MergePlan, merge
from studbook_trainer.operators.base import (
    LocalParent,
    Operator,
    OperatorError,
    RunContext,
    log,
    register,
)
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


IMPORT_SUFFIXES: Final = frozenset({".safetensors", ".json", ".txt", ".model", ".md", ".jinja"})
"""What an import takes, by suffix: safetensors weights; the JSON and text files of a config
and a tokenizer (``config.json``, ``tokenizer.json``, ``vocab.txt``, ``merges.txt``);
sentencepiece models (``*.model``); a model card (``*.md``); chat templates (``*.jinja``). None
of them runs code when it is loaded."""
IMPORT_NAMES: Final = frozenset({".gitattributes", "LICENSE", "NOTICE"})
"""Plain-text files a model repository carries without such a suffix."""
PICKLE_SUFFIXES: Final = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
"""Weights torch loads with pickle, which can run any code: refused with that reason."""


def _refusal(path: str) -> str | None:
    """Why an import refuses a file, or ``None`` if it takes it."""
    name = PurePosixPath(path).name
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return f"{path} is a pickle ({suffix}), which can run code when loaded"
    if suffix in IMPORT_SUFFIXES or name in IMPORT_NAMES:
        return None
    return f"{path} is not a safetensors, JSON or text file"


def import_listing(fs: Any, source: str, uri: str) -> list[tuple[str, str]]:
    """The files an import copies, as (source path, path in the package).

    The whole source is checked before anything is copied: every file must be on the allow-list
    and lie under the source as itself. The source may be a link (``make demo`` links the
    installed founder); nothing under it may, since a link could pull in any file of the pod.
    """
    root = source.rstrip("/")
    if fs.isdir(root):
        entries = fs.find(root, withdirs=True, detail=True).values()
        prefix = root + "/"
    else:
        entries = [fs.info(root)]
        prefix = root.rsplit("/", 1)[0] + "/"
    files: list[tuple[str, str]] = []
    problems: list[str] = []
    for entry in sorted(entries, key=lambda e: str(e["name"])):
        name = str(entry["name"])
        if name == root and entry["type"] == "directory":
            continue
        relative = name[len(prefix) :] if name.startswith(prefix) else name
        try:
            check_package_path(relative)
        except PackageFormatError:
            problems.append(f"{relative!r} is not a path inside the source")
            continue
        if entry.get("islink") and name != root:
            problems.append(f"{relative} is a symbolic link")
        elif entry["type"] == "file":
            problem = _refusal(relative)
            if problem is None:
                files.append((name, relative))
            else:
                problems.append(problem)
        elif entry["type"] != "directory":
            problems.append(f"{relative} is not a regular file")
    if problems:
        raise OperatorError(
            f"import of {uri!r} refused, it takes only safetensors weights and the JSON and text"
            f" files of a config and tokenizer: {'; '.join(problems)}"
        )
    if not files:
        raise OperatorError(f"import of {uri!r} refused: the source holds no files")
    return files


class ImportOperator(Operator):
    """Copy a model from a local path or an fsspec URI and check its expected digest.

    Only safetensors weights and plain config and tokenizer files are taken
    (:data:`IMPORT_SUFFIXES`): a founder is read by every later step, so a pickled checkpoint
    would run its code in each of them, and sealing would sign it.
    """

    name = "import"
    reference = "https://filesystem-spec.readthedocs.io/"
    plan_type = ImportPlan

    def run(self, plan: ImportPlan, ctx: RunContext) -> dict[str, Any]:
        """Check the source's files, fetch them, then verify; a digest mismatch refuses."""
        import fsspec

        uri = plan.uri
        fs, _, paths = fsspec.get_fs_token_paths(uri)
        source = paths[0]
        if not fs.exists(source):
            raise OperatorError(f"import source {uri!r} does not exist")
        for path, relative in import_listing(fs, source, uri):
            target = ctx.out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
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


def engine_plan(
    plan: MergeOperatorPlan, parents: Sequence[LocalParent], device: str = "auto"
) -> MergePlan:
    """The merge engine's plan of a merge: every parent but the base merged, by name.

    Raises :class:`OperatorError` for weights or a base that name no parent.
    """
    names = {p.name for p in parents}
    unknown = set(plan.weights) - names
    if unknown:
        raise OperatorError(f"weights name unknown parents: {sorted(unknown)}")
    base = None
    if plan.base:
        base = next((p for p in parents if p.name == plan.base), None)
        if base is None:
            known = ", ".join(p.name for p in parents) or "none"
            raise OperatorError(f"no parent named {plan.base!r} (parents: {known})")
    merged = []
    for p in parents:
        if base is not None and p.name == base.name:
            continue
        params: dict[str, Any] = dict((plan.parent_params or {}).get(p.name, {}))
        if p.name in plan.weights:
            params["weight"] = plan.weights[p.name]
        merged.append(MergeParent(p.name, p.path, params))
    return MergePlan(
        method=plan.method,
        parents=tuple(merged),
        base=MergeParent(base.name, base.path) if base is not None else None,
        params=dict(plan.params or {}),
        overrides=tuple(plan.overrides),
        seed=plan.seed,
        dtype=plan.dtype,
        device=device,
    )


class MergeOperator(Operator):
    """Weight-space merge of compatible parents with the streaming engine."""

    name = "merge"
    reference = "https://arxiv.org/abs/2403.13257"
    plan_type = MergeOperatorPlan

    def run(self, plan: MergeOperatorPlan, ctx: RunContext) -> dict[str, Any]:
        """Build the engine plan from named parents and merge."""
        report = merge(engine_plan(plan, ctx.parents, ctx.device), ctx.out_dir)
        log.info("merged %d tensors in %.1f s", report.tensors, report.seconds)
        return report.outcome()


for _op in (ImportOperator(), FinetuneOperator(), MergeOperator()):
    register(_op)
