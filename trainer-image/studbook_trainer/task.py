"""The task file a Job runs, and its translation into operator plans.

This is the one place that knows the task's wire format. A task names the operator, its
configuration, the parents (by name, with a URI and optionally the expected artifact id), the
datasets and the output location::

    {"operator": "merge",
     "config": {"method": "ties", "base": "base", "weights": [{"parent": "a", "weight": 0.7}],
                "parameters": {"density": 0.5}},
     "parents": [{"name": "a", "uri": "s3://bucket/a", "digest": "sha256:..."}, ...],
     "data": [{"name": "sentiment", "uri": "file:///data/sentiment.jsonl"}],
     "output": "/out/descendant"}

The operator may also come in the descendant's spec form, ``{"kind": "merge", "merge": {...}}``
(``studbook.api``'s ``OperatorSpec``); keys may be camelCase or snake_case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studbook_trainer.failures import StepRefused
from studbook_trainer.merge.plan import Override
from studbook_trainer.operators.compress import PrunePlan, QuantizePlan
from studbook_trainer.operators.distill import AgreementPlan, DistillPlan
from studbook_trainer.operators.lora import CompositionPlan, LoraPlan
from studbook_trainer.operators.simple import FinetunePlan, ImportPlan, MergeOperatorPlan


class TaskError(StepRefused, ValueError):
    """A task file that cannot be run as written."""


@dataclass(frozen=True)
class Source:
    """A named input: a parent model or a dataset."""

    name: str
    uri: str
    digest: str | None = None


@dataclass(frozen=True)
class Task:
    """A parsed task: operator, its plan, inputs and output."""

    operator: str
    plan: Any
    parents: tuple[Source, ...]
    data: tuple[Source, ...]
    output: str
    device: str = "auto"
    raw_config: Mapping[str, Any] = field(default_factory=dict)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def normalize(value: Any) -> Any:
    """CamelCase keys to snake_case, recursively."""
    if isinstance(value, dict):
        return {_snake(k): normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def _take(config: dict[str, Any], keys: tuple[str, ...], op: str) -> dict[str, Any]:
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise TaskError(f"{op}: unknown configuration field(s) {unknown}")
    return {k: config[k] for k in keys if k in config and config[k] is not None}


_TRAIN = (
    "task",
    "datasets",
    "steps",
    "learning_rate",
    "batch_size",
    "max_seq_length",
    "warmup_ratio",
    "weight_decay",
    "num_labels",
    "seed",
)


def _train_kwargs(c: dict[str, Any]) -> dict[str, Any]:
    out = {k: c[k] for k in _TRAIN if k in c and c[k] is not None}
    if "datasets" in out:
        out["datasets"] = tuple(out["datasets"])
    missing = [k for k in ("task", "datasets", "steps", "learning_rate") if k not in out]
    if missing:
        raise TaskError(f"missing training field(s) {missing}")
    return out


def _import(c: dict[str, Any]) -> ImportPlan:
    c = _take(c, ("uri", "digest", "format"), "import")
    if "uri" not in c:
        raise TaskError("import: uri is required")
    if c.get("format", "safetensors") != "safetensors":
        raise TaskError(f"import: format {c['format']!r} is not supported (safetensors)")
    return ImportPlan(uri=c["uri"], digest=c.get("digest"))


def _finetune(c: dict[str, Any]) -> FinetunePlan:
    c = _take(c, (*_TRAIN, "freeze"), "finetune")
    return FinetunePlan(**_train_kwargs(c), freeze=tuple(c.get("freeze", ())))


def _lora(c: dict[str, Any]) -> LoraPlan:
    c = _take(
        c,
        (*_TRAIN, "rank", "alpha", "dropout", "target_modules", "compose", "merge_into_base"),
        "lora",
    )
    compose = None
    if c.get("compose"):
        comp = c["compose"]
        compose = CompositionPlan(method=comp["method"], weights=tuple(comp["weights"]))
        c.setdefault("steps", 1)
        c.setdefault("learning_rate", 1e-4)
        c.setdefault("datasets", ["none"])
    return LoraPlan(
        **_train_kwargs(c),
        rank=c.get("rank", 8),
        alpha=c.get("alpha", 16.0),
        dropout=c.get("dropout", 0.0),
        target_modules=tuple(c.get("target_modules", ())),
        compose=compose,
        merge_into_base=bool(c.get("merge_into_base", False)),
    )


def _distill(c: dict[str, Any]) -> DistillPlan:
    c = _take(c, (*_TRAIN, "student", "temperature", "alpha", "agreement"), "distill")
    student = c.get("student") or {}
    agreement = c.get("agreement") or {}
    return DistillPlan(
        **_train_kwargs(c),
        student_parent=student.get("parent"),
        student_layers=student.get("num_layers"),
        temperature=c.get("temperature", 2.0),
        alpha=c.get("alpha", 0.5),
        agreement=AgreementPlan(**agreement),
    )


def _quantize(c: dict[str, Any]) -> QuantizePlan:
    c = _take(
        c,
        ("scheme", "granularity", "group_size", "skip_modules", "calibration_dataset"),
        "quantize",
    )
    return QuantizePlan(
        scheme=c.get("scheme", "int8-weight-only"),
        granularity=c.get("granularity", "per-channel"),
        group_size=c.get("group_size"),
        skip_modules=tuple(c.get("skip_modules", ())),
        calibration_dataset=c.get("calibration_dataset"),
    )


def _prune(c: dict[str, Any]) -> PrunePlan:
    c = _take(
        c, ("method", "target_sparsity", "scope", "skip_modules", "calibration_dataset"), "prune"
    )
    if "method" not in c or "target_sparsity" not in c:
        raise TaskError("prune: method and target_sparsity are required")
    plan = PrunePlan(
        method=c["method"],
        target_sparsity=float(c["target_sparsity"]),
        scope=c.get("scope", "per-layer"),
        skip_modules=tuple(c.get("skip_modules", ())),
        calibration_dataset=c.get("calibration_dataset"),
    )
    plan.check()
    return plan


_PARAM_NAMES = {"lambda": "scale", "lambda_": "scale"}


def _params(p: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (p or {}).items():
        if v is None:
            continue
        out[_PARAM_NAMES.get(k, k)] = tuple(v) if isinstance(v, list) else v
    return out


def _weights(entries: Any) -> dict[str, float]:
    if isinstance(entries, dict):
        return {str(k): float(v) for k, v in entries.items()}
    return {e["parent"]: float(e["weight"]) for e in entries or []}


def _merge(c: dict[str, Any]) -> MergeOperatorPlan:
    c = _take(c, ("method", "base", "weights", "parameters", "overrides", "dtype", "seed"), "merge")
    if "method" not in c:
        raise TaskError("merge: method is required")
    overrides = []
    for o in c.get("overrides", []):
        pattern = o.get("tensors") or o.get("filter")
        if not pattern:
            raise TaskError("merge: every override needs a 'tensors' filter")
        parent_params = {k: {"weight": v} for k, v in _weights(o.get("weights")).items()}
        overrides.append(Override(pattern, _params(o.get("parameters")), parent_params))
    return MergeOperatorPlan(
        method=c["method"],
        weights=_weights(c.get("weights")),
        base=c.get("base"),
        params=_params(c.get("parameters")),
        overrides=tuple(overrides),
        dtype=c.get("dtype"),
        seed=int(c.get("seed", 0)),
    )


TRANSLATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "import": _import,
    "finetune": _finetune,
    "lora": _lora,
    "distill": _distill,
    "quantize": _quantize,
    "prune": _prune,
    "merge": _merge,
}
"""Operator configuration (task form) to the operator's plan."""


def operator_plan(op: str, config: Mapping[str, Any]) -> Any:
    """The plan of one operator's configuration (task form, snake_case keys).

    Raises :class:`TaskError` for an unknown operator or a configuration it cannot run.
    """
    if op not in TRANSLATORS:
        raise TaskError(f"unknown operator {op!r}; known: {', '.join(sorted(TRANSLATORS))}")
    try:
        return TRANSLATORS[op](dict(config))
    except TaskError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise TaskError(f"{op}: bad configuration: {e}") from e


def _sources(entries: Any, what: str) -> tuple[Source, ...]:
    if not isinstance(entries, list):
        raise TaskError(f"{what} must be a list")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not e.get("name") or not e.get("uri"):
            raise TaskError(f"every entry of {what} needs a name and a uri")
        out.append(Source(e["name"], e["uri"], e.get("digest") or e.get("artifact_id")))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise TaskError(f"duplicate names in {what}: {names}")
    return tuple(out)


def parse_task(data: Any) -> Task:
    """Validate a task document and build the operator's plan; raises :class:`TaskError`."""
    if not isinstance(data, dict):
        raise TaskError("a task is a JSON object")
    data = normalize(data)
    op = data.get("operator")
    config: Any = data.get("config")
    if isinstance(op, dict):  # the descendant spec form: {"kind": ..., "<kind>": {...}}
        kind = op.get("kind")
        config = op.get("import_" if kind == "import" else kind, op.get(str(kind)))
        op = kind
    if not isinstance(op, str):
        raise TaskError("the task names no operator")
    if op not in TRANSLATORS:
        raise TaskError(f"unknown operator {op!r}; known: {', '.join(sorted(TRANSLATORS))}")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TaskError(f"{op}: configuration must be an object")
    output = data.get("output")
    if not isinstance(output, str) or not output:
        raise TaskError("the task names no output location")
    plan = operator_plan(op, config)
    return Task(
        operator=op,
        plan=plan,
        parents=_sources(data.get("parents", []), "parents"),
        data=_sources(data.get("data", []), "data"),
        output=output,
        device=str(data.get("device", "auto")),
        raw_config=config,
    )


def load_task(path: Path) -> Task:
    """Read and parse a task file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise TaskError(f"task file {path} is not JSON: {e}") from None
    return parse_task(data)
