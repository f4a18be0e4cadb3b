"""Realistic wrong manifests, shared by the unit tests (pydantic) and the cluster tests (the API
server must refuse the same ones with its schema and CEL rules)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Manifest = dict[str, Any]


def example(name: str) -> Manifest:
    """A fresh copy of one example manifest."""
    loaded: Manifest = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return copy.deepcopy(loaded)


@dataclass(frozen=True)
class WrongManifest:
    """A manifest with one realistic mistake, the field it is at, and words of the refusal."""

    id: str
    base: str
    mutate: Callable[[Manifest], None]
    field: str
    words: str

    def build(self) -> Manifest:
        manifest = example(self.base)
        self.mutate(manifest)
        return manifest


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        *parents, last = path.split(".")
        node: Any = manifest
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


def _delete(path: str) -> Callable[[Manifest], None]:
    return _set(path, _DELETE)


def _merge_one_parent(m: Manifest) -> None:
    m["spec"]["parents"] = [{"name": "minilm-sentiment"}]
    m["spec"]["operator"]["merge"] = {"method": "linear"}


def _slerp_three_parents(m: Manifest) -> None:
    m["spec"]["operator"]["merge"] = {"method": "slerp", "parameters": {"t": 0.5}}


def _two_members(m: Manifest) -> None:
    m["spec"]["operator"]["merge"] = {"method": "linear"}


def _canary_decreasing(m: Manifest) -> None:
    m["spec"]["strategy"]["canarySteps"][2]["weight"] = 20


def _overlapping_roles(m: Manifest) -> None:
    m["spec"]["datasets"][3]["digest"] = m["spec"]["datasets"][1]["digest"]


def _duplicate_parent(m: Manifest) -> None:
    m["spec"]["parents"].append({"name": "minilm-topic"})


def _quantize(**fields: Any) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        m["spec"]["operator"]["quantize"].update(fields)

    return mutate


def _cmaes_one_objective(m: Manifest) -> None:
    m["spec"]["strategy"] = "cmaes"
    del m["spec"]["nsga2"]
    m["spec"]["objectives"] = m["spec"]["objectives"][:1]


def _ensemble(m: Manifest) -> None:
    m["spec"]["operator"] = {
        "kind": "ensemble",
        "ensemble": {"aggregation": "mean-probabilities"},
    }


def _router(m: Manifest) -> None:
    m["spec"]["operator"] = {
        "kind": "router",
        "router": {
            "strategy": "niche",
            "routes": [{"parent": "minilm-topic", "taxonomy": ["classification/topic"]}],
            "fallback": "minilm-sentiment",
        },
    }


def _merge_weight_twice(m: Manifest) -> None:
    m["spec"]["operator"]["merge"]["weights"].append({"parent": "minilm-topic", "weight": 0.5})


def _override_weight_twice(m: Manifest) -> None:
    m["spec"]["operator"]["merge"]["overrides"][0]["weights"].append(
        {"parent": "minilm-sentiment", "weight": 0.5}
    )


def _data_twice(m: Manifest) -> None:
    m["spec"]["data"].append({**m["spec"]["data"][0], "uri": "s3://ml-data/train/other.jsonl"})


def _distill_student_only(m: Manifest) -> None:
    m["spec"]["parents"] = [{"name": "minilm-sentiment"}]


WRONG_MANIFESTS: list[WrongManifest] = [
    WrongManifest(
        "merge-one-parent", "ties-merge", _merge_one_parent, "spec.parents", "at least two parents"
    ),
    WrongManifest(
        "slerp-three-parents",
        "ties-merge",
        _slerp_three_parents,
        "spec.parents",
        "slerp merges exactly two parents",
    ),
    WrongManifest(
        "unknown-operator-kind",
        "lora-specialist",
        _set("spec.operator.kind", "crossbreed"),
        "spec.operator.kind",
        "Input should be",
    ),
    WrongManifest(
        "lora-rank-zero",
        "lora-specialist",
        _set("spec.operator.lora.rank", 0),
        "spec.operator.lora.rank",
        "greater than or equal to 1",
    ),
    WrongManifest(
        "lora-rank-string",
        "lora-specialist",
        _set("spec.operator.lora.rank", "8"),
        "spec.operator.lora.rank",
        "valid integer",
    ),
    WrongManifest(
        "lora-no-target-modules",
        "lora-specialist",
        _set("spec.operator.lora.targetModules", []),
        "spec.operator.lora.targetModules",
        "at least 1",
    ),
    WrongManifest(
        "learning-rate-negative",
        "lora-specialist",
        _set("spec.operator.lora.learningRate", -0.1),
        "spec.operator.lora.learningRate",
        "greater than 0",
    ),
    WrongManifest(
        "classification-without-labels",
        "lora-specialist",
        _delete("spec.operator.lora.numLabels"),
        "spec.operator.lora.numLabels",
        "numLabels is required",
    ),
    WrongManifest(
        "undeclared-dataset",
        "lora-specialist",
        _set("spec.operator.lora.datasets", ["tweets"]),
        "spec.data",
        "must be declared in data",
    ),
    WrongManifest(
        "member-kind-mismatch",
        "lora-specialist",
        _set("spec.operator.kind", "merge"),
        "spec.operator",
        "exactly the member 'merge'",
    ),
    WrongManifest(
        "two-members", "lora-specialist", _two_members, "spec.operator", "exactly the member 'lora'"
    ),
    WrongManifest(
        "negative-canary-weight",
        "promotion",
        _set("spec.strategy.canarySteps.0.weight", -5),
        "spec.strategy.canarySteps[0].weight",
        "greater than or equal to 0",
    ),
    WrongManifest(
        "canary-weight-over-100",
        "promotion",
        _set("spec.strategy.canarySteps.2.weight", 150),
        "spec.strategy.canarySteps[2].weight",
        "less than or equal to 100",
    ),
    WrongManifest(
        "canary-not-increasing",
        "promotion",
        _canary_decreasing,
        "spec.strategy.canarySteps",
        "strictly increasing",
    ),
    WrongManifest(
        "missing-suite-reference",
        "lora-specialist",
        _delete("spec.evaluationSuiteRef"),
        "spec.evaluationSuiteRef",
        "Field required",
    ),
    WrongManifest(
        "missing-policy-reference",
        "ties-merge",
        _delete("spec.policyRef"),
        "spec.policyRef",
        "Field required",
    ),
    WrongManifest(
        "ties-without-base",
        "ties-merge",
        _delete("spec.operator.merge.base"),
        "spec.operator.merge.base",
        "base is required",
    ),
    WrongManifest(
        "model-stock-with-weights",
        "ties-merge",
        _set("spec.operator.merge.method", "model_stock"),
        "spec.operator.merge.weights",
        "slerp and model_stock take no weights",
    ),
    WrongManifest(
        "ties-without-density",
        "ties-merge",
        _delete("spec.operator.merge.parameters.density"),
        "spec.operator.merge.parameters.density",
        "density is required",
    ),
    WrongManifest(
        "merge-base-not-a-parent",
        "ties-merge",
        _set("spec.operator.merge.base", "llama-base"),
        "spec.operator.merge",
        "must name parents",
    ),
    WrongManifest(
        "density-over-one",
        "ties-merge",
        _set("spec.operator.merge.parameters.density", 1.5),
        "spec.operator.merge.parameters.density",
        "less than or equal to 1",
    ),
    WrongManifest(
        "unknown-merge-method",
        "ties-merge",
        _set("spec.operator.merge.method", "average"),
        "spec.operator.merge.method",
        "Input should be",
    ),
    WrongManifest(
        "import-with-parents",
        "founder-import",
        _set("spec.parents", [{"name": "minilm-sentiment"}]),
        "spec.parents",
        "must be empty for operator import",
    ),
    WrongManifest(
        "import-bad-digest",
        "founder-import",
        _set("spec.operator.import.digest", "md5:abc"),
        "spec.operator.import.digest",
        "should match pattern",
    ),
    WrongManifest(
        "quantize-two-parents",
        "quantization",
        _set("spec.parents", [{"name": "a-model"}, {"name": "b-model"}]),
        "spec.parents",
        "exactly one parent",
    ),
    WrongManifest(
        "unknown-field",
        "lora-specialist",
        _set("spec.operator.lora.rnak", 8),
        "spec.operator.lora.rnak",
        "Extra inputs are not permitted",
    ),
    WrongManifest(
        "parent-name-uppercase",
        "ties-merge",
        _set("spec.parents.1.name", "MiniLM_Topic"),
        "spec.parents[1].name",
        "should match pattern",
    ),
    WrongManifest("duplicate-parent", "ties-merge", _duplicate_parent, "spec.parents", "unique"),
    WrongManifest(
        "gpus-as-string",
        "lora-specialist",
        _set("spec.resources.gpus", "one"),
        "spec.resources.gpus",
        "valid integer",
    ),
    WrongManifest(
        "bad-memory-quantity",
        "lora-specialist",
        _set("spec.resources.memory", "lots"),
        "spec.resources.memory",
        "should match pattern",
    ),
    WrongManifest(
        "bad-risk-tier",
        "lora-specialist",
        _set("spec.riskTier", "extreme"),
        "spec.riskTier",
        "Input should be",
    ),
    WrongManifest(
        "confidence-range-reversed",
        "lora-specialist",
        _set("spec.niche.confidenceRange", [0.9, 0.5]),
        "spec.niche.confidenceRange",
        "low <= high",
    ),
    WrongManifest(
        "suite-holdout-leak", "suite", _overlapping_roles, "spec.datasets", "must not overlap"
    ),
    WrongManifest(
        "suite-metric-unknown-dataset",
        "suite",
        _set("spec.metrics.0.dataset", "imdb-gate"),
        "spec.datasets",
        "must name datasets",
    ),
    WrongManifest(
        "suite-bad-version",
        "suite",
        _set("spec.version", "v1"),
        "spec.version",
        "should match pattern",
    ),
    WrongManifest(
        "policy-no-operators",
        "policy",
        _set("spec.allowedOperators", []),
        "spec.allowedOperators",
        "at least 1",
    ),
    WrongManifest(
        "policy-signer-without-member",
        "policy",
        _delete("spec.trustedSigners.0.keyless"),
        "spec.trustedSigners[0]",
        "exactly the member 'keyless'",
    ),
    WrongManifest(
        "policy-priority-class-not-a-name",
        "policy",
        _set("spec.scheduling.allowedPriorityClassNames", ["Batch_Low"]),
        "spec.scheduling.allowedPriorityClassNames[0]",
        "should match pattern",
    ),
    WrongManifest(
        "run-tpe-two-objectives",
        "breeding-run",
        _set("spec.strategy", "tpe"),
        "spec.strategy",
        "strategies cmaes and tpe optimise one objective",
    ),
    WrongManifest(
        "run-cmaes-three-methods",
        "breeding-run",
        _cmaes_one_objective,
        "spec.strategy",
        "strategy cmaes searches numbers only",
    ),
    WrongManifest(
        "run-nsga2-settings-with-random",
        "breeding-run",
        _set("spec.strategy", "random"),
        "spec.nsga2",
        "nsga2 settings apply to strategy nsga2 only",
    ),
    WrongManifest(
        "run-selection-removed",
        "breeding-run",
        _set("spec.selection", {"elites": 2}),
        "spec.selection",
        "Extra inputs are not permitted",
    ),
    WrongManifest(
        "run-density-without-sparsifying-method",
        "breeding-run",
        _set("spec.searchSpace.methods", ["linear", "task_arithmetic"]),
        "spec.searchSpace.densityRange",
        "densityRange is unused",
    ),
    WrongManifest(
        "run-blocks-with-layer-granularity",
        "breeding-run",
        _set("spec.searchSpace.layerGranularity", "layer"),
        "spec.searchSpace.blocks",
        "blocks is required with layerGranularity block, and only then",
    ),
    WrongManifest(
        "run-population-over-max-trials",
        "breeding-run",
        _set("spec.budget.population", 200),
        "spec.budget.population",
        "population must not exceed maxTrials",
    ),
    WrongManifest(
        "run-goal-below-threshold",
        "breeding-run",
        _set("spec.objectives.0.goal", 0.5),
        "spec.objectives[0].goal",
        "goal must be at least as good as threshold",
    ),
    WrongManifest(
        "run-range-reversed",
        "breeding-run",
        _set("spec.searchSpace.weightRange", {"min": 2.0, "max": 0.5}),
        "spec.searchSpace.weightRange.min",
        "min must not exceed max",
    ),
    # What nothing runs is refused at admission, not after the breed Job's retries.
    WrongManifest(
        "import-format-pytorch",
        "founder-import",
        _set("spec.operator.import.format", "pytorch"),
        "spec.operator.import.format",
        "Input should be 'safetensors'",
    ),
    WrongManifest(
        "import-format-gguf",
        "founder-import",
        _set("spec.operator.import.format", "gguf"),
        "spec.operator.import.format",
        "Input should be 'safetensors'",
    ),
    WrongManifest(
        "import-pvc-uri",
        "founder-import",
        _set("spec.operator.import.uri", "pvc://models/minilm"),
        "spec.operator.import.uri",
        "pvc:// URIs are not supported",
    ),
    WrongManifest(
        "data-pvc-uri",
        "lora-specialist",
        _set("spec.data.0.uri", "pvc://ml-data/train/reviews.jsonl"),
        "spec.data[0].uri",
        "pvc:// URIs are not supported",
    ),
    WrongManifest(
        "suite-pvc-uri",
        "suite",
        _set("spec.datasets.0.uri", "pvc://ml-data/eval/sentiment.jsonl"),
        "spec.datasets[0].uri",
        "pvc:// URIs are not supported",
    ),
    WrongManifest(
        "ensemble-not-yet-supported",
        "ties-merge",
        _ensemble,
        "spec.operator.kind",
        "operator ensemble is not yet supported",
    ),
    WrongManifest(
        "router-not-yet-supported",
        "ties-merge",
        _router,
        "spec.operator.kind",
        "operator router is not yet supported",
    ),
    WrongManifest(
        "quantize-int4-per-channel",
        "quantization",
        _set("spec.operator.quantize.scheme", "int4-weight-only"),
        "spec.operator.quantize.granularity",
        "int8-weight-only is quantized per-channel and int4-weight-only per-group",
    ),
    WrongManifest(
        "quantize-int8-per-group",
        "quantization",
        _quantize(granularity="per-group", groupSize=128),
        "spec.operator.quantize.granularity",
        "int8-weight-only is quantized per-channel and int4-weight-only per-group",
    ),
    WrongManifest(
        "quantize-int4-without-group-size",
        "quantization",
        _quantize(scheme="int4-weight-only", granularity="per-group"),
        "spec.operator.quantize.groupSize",
        "groupSize is required with granularity per-group, and only then",
    ),
    WrongManifest(
        "quantize-int4-group-size-too-small",
        "quantization",
        _quantize(scheme="int4-weight-only", granularity="per-group", groupSize=4),
        "spec.operator.quantize.groupSize",
        "Input should be greater than or equal to 8",
    ),
    WrongManifest(
        "quantize-per-tensor",
        "quantization",
        _set("spec.operator.quantize.granularity", "per-tensor"),
        "spec.operator.quantize.granularity",
        "Input should be 'per-channel' or 'per-group'",
    ),
    WrongManifest(
        "quantize-group-size-per-channel",
        "quantization",
        _set("spec.operator.quantize.groupSize", 128),
        "spec.operator.quantize.groupSize",
        "groupSize is required with granularity per-group, and only then",
    ),
    WrongManifest(
        "compatibility-nf4",
        "quantization",
        _set("spec.compatibility.quantization", "nf4"),
        "spec.compatibility.quantization",
        "Input should be 'none', 'int8' or 'int4'",
    ),
    # Mistakes that used to surface late (or never) are refused with their field.
    WrongManifest(
        "merge-weight-parent-twice",
        "ties-merge",
        _merge_weight_twice,
        "spec.operator.merge.weights",
        "must not list a parent twice",
    ),
    WrongManifest(
        "merge-override-weight-parent-twice",
        "ties-merge",
        _override_weight_twice,
        "spec.operator.merge.overrides[0].weights",
        "must not list a parent twice",
    ),
    WrongManifest(
        "data-name-twice", "lora-specialist", _data_twice, "spec.data", "data names must be unique"
    ),
    WrongManifest(
        "distill-without-teacher",
        "distillation",
        _distill_student_only,
        "spec.parents",
        "distill needs a teacher",
    ),
    WrongManifest(
        "distill-causal-lm",
        "distillation",
        _set("spec.operator.distill.task", "causal-lm"),
        "spec.operator.distill.task",
        "sequence-classification only",
    ),
    WrongManifest(
        "suite-accuracy-threshold-over-one",
        "suite",
        _set("spec.thresholds.0.min", 1.5),
        "spec.thresholds[0].min",
        "must lie in [0, 1]",
    ),
    WrongManifest(
        "suite-ece-threshold-negative",
        "suite",
        _set("spec.thresholds.1.max", -0.1),
        "spec.thresholds[1].max",
        "must lie in [0, 1]",
    ),
    WrongManifest(
        "suite-threshold-min-over-max",
        "suite",
        _set("spec.thresholds.0.max", 0.5),
        "spec.thresholds[0].min",
        "min must not exceed max",
    ),
    WrongManifest(
        "suite-threshold-without-bounds",
        "suite",
        _delete("spec.thresholds.0.min"),
        "spec.thresholds[0].min",
        "needs min, max or both",
    ),
    WrongManifest(
        "policy-min-accuracy-over-one",
        "policy",
        _set("spec.evaluationGates.minMetrics.accuracy", 1.5),
        "spec.evaluationGates.minMetrics",
        "must lie in [0, 1]",
    ),
    WrongManifest(
        "policy-max-ece-by-dataset-negative",
        "policy",
        _set("spec.evaluationGates.maxMetrics", {"sentiment-gate/ece": -0.05}),
        "spec.evaluationGates.maxMetrics",
        "must lie in [0, 1]",
    ),
    WrongManifest(
        "policy-min-over-max",
        "policy",
        _set("spec.evaluationGates.maxMetrics", {"accuracy": 0.5}),
        "spec.evaluationGates.minMetrics",
        "must not exceed its maxMetrics",
    ),
    WrongManifest(
        "policy-negative-niche-regression",
        "policy",
        _set("spec.evaluationGates.maxNicheRegression", -0.01),
        "spec.evaluationGates.maxNicheRegression",
        "greater than or equal to 0",
    ),
    WrongManifest(
        "promotion-min-accuracy-over-one",
        "promotion",
        _set("spec.gates.minMetrics.sentiment-gate/accuracy", 1.2),
        "spec.gates.minMetrics",
        "must lie in [0, 1]",
    ),
    WrongManifest(
        "run-max-trials-string",
        "breeding-run",
        _set("spec.budget.maxTrials", "ninety-six"),
        "spec.budget.maxTrials",
        "valid integer",
    ),
]
