"""``EvaluationSuite``: a versioned, immutable set of datasets, metrics and niche probes."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from studbook.api.base import ApiModel, Rule
from studbook.api.common import Conditions, DatasetRef, Digest, Fraction, Name
from studbook.api.resource import CrdInfo, PrinterColumn, Resource

EvalTask = Literal["classification", "causal-lm", "custom"]
"""What an evaluation dataset measures."""


class SuiteDataset(DatasetRef):
    """An evaluation dataset with its role."""

    role: Literal["optimize", "gate", "holdout"]
    """``optimize``: a search may tune on it; ``gate``: promotion decisions; ``holdout``: never
    seen by any search, only reported."""
    task: EvalTask
    """The evaluation task the dataset feeds."""
    custom_task: (
        Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", max_length=256)] | None
    ) = None
    """For task ``custom``: ``module:function`` of a user-defined evaluation task."""
    limit: Annotated[int, Field(ge=1)] | None = None
    """Evaluate on the first ``limit`` examples only."""

    rules = (
        *DatasetRef.rules,
        Rule(
            cel="(self.task == 'custom') == has(self.customTask)",
            message="customTask is required for task custom, and only then",
            check=lambda d: (d.task == "custom") == (d.custom_task is not None),
            field_path=".customTask",
        ),
    )


MetricName = Literal[
    "accuracy", "macro_f1", "perplexity", "exact_match", "ece", "latency_ms", "size_bytes", "custom"
]

BOUNDED_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "exact_match", "ece")
"""Metrics that are fractions: every value, and so every bound on one, lies in [0, 1]."""

BOUNDED_MESSAGE = "bounds of accuracy, macro_f1, exact_match and ece must lie in [0, 1]"


def is_bounded_metric(key: str) -> bool:
    """Whether a metric name, bare or as ``<dataset>/<metric>``, names a fraction metric."""
    return key.rsplit("/", 1)[-1] in BOUNDED_METRICS


def bounded_metric_cel(var: str) -> str:
    """CEL for :func:`is_bounded_metric` of the string ``var``."""
    names = ", ".join(f"'{m}'" for m in BOUNDED_METRICS)
    suffixes = " || ".join(f"{var}.endsWith('/{m}')" for m in BOUNDED_METRICS)
    return f"({var} in [{names}] || {suffixes})"


def bounded_map_rule(field: str, attr: str) -> Rule:
    """A rule on a map of metric bounds: those of fraction metrics lie in [0, 1]."""
    return Rule(
        cel=f"!has(self.{field}) || self.{field}.all(k, !{bounded_metric_cel('k')}"
        f" || (self.{field}[k] >= 0.0 && self.{field}[k] <= 1.0))",
        message=f"{field}: {BOUNDED_MESSAGE}",
        check=lambda g: all(
            0.0 <= v <= 1.0 for k, v in getattr(g, attr).items() if is_bounded_metric(k)
        ),
        field_path=f".{field}",
    )


class MetricSpec(ApiModel):
    """A metric the suite reports."""

    name: MetricName
    """The metric."""
    dataset: Name
    """The dataset it is computed on."""
    direction: Literal["maximize", "minimize"]
    """Whether higher or lower is better."""


def _bounded_threshold(bound: str) -> Rule:
    """The rule that keeps a threshold's ``bound`` of a fraction metric in [0, 1]."""
    return Rule(
        cel=f"!(self.metric in {list(BOUNDED_METRICS)}) || !has(self.{bound})"
        f" || (self.{bound} >= 0.0 && self.{bound} <= 1.0)",
        message=f"{bound}: {BOUNDED_MESSAGE}",
        check=lambda t: (
            t.metric not in BOUNDED_METRICS
            or getattr(t, bound) is None
            or 0.0 <= getattr(t, bound) <= 1.0
        ),
        field_path=f".{bound}",
    )


class Threshold(ApiModel):
    """Bounds a metric must stay within for the verdict ``pass``."""

    metric: MetricName
    """The metric."""
    dataset: Name
    """The dataset the metric is computed on."""
    min: float | None = None
    """Lowest passing value; within [0, 1] for accuracy, macro_f1, exact_match and ece."""
    max: float | None = None
    """Highest passing value; within [0, 1] for accuracy, macro_f1, exact_match and ece, and not
    below ``min``."""

    rules = (
        Rule(
            cel="has(self.min) || has(self.max)",
            message="a threshold needs min, max or both",
            check=lambda t: t.min is not None or t.max is not None,
            field_path=".min",
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="min must not exceed max: no value could pass",
            check=lambda t: t.min is None or t.max is None or t.min <= t.max,
            field_path=".min",
        ),
        _bounded_threshold("min"),
        _bounded_threshold("max"),
    )


class NicheProbe(ApiModel):
    """A parent's original niche, evaluated on every child so that forgotten skills show."""

    name: Name
    """The probe's name."""
    taxonomy: Annotated[str, Field(min_length=1, max_length=128)]
    """The niche's taxonomy path; parents whose niche lists it are probed."""
    dataset: Name
    """The dataset that measures it."""
    metric: MetricName = "accuracy"
    """The metric of the probe."""


class Bootstrap(ApiModel):
    """How confidence intervals are estimated."""

    samples: Annotated[int, Field(ge=10, le=100_000)] = 1000
    """Bootstrap resamples."""
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    """Confidence level of the intervals."""


class EvaluationSuiteSpec(ApiModel):
    """The suite; immutable once created, so every scorecard of one version is comparable."""

    version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")]
    """Semantic version; a changed suite is a new resource with a new version."""
    datasets: Annotated[list[SuiteDataset], Field(min_length=1, max_length=32)]
    """The datasets."""
    metrics: Annotated[list[MetricSpec], Field(min_length=1, max_length=32)]
    """The metrics, on named datasets."""
    objective: Annotated[list[Name], Field(max_length=8)] = []
    """Datasets whose first metric forms the objective net gain is measured on; empty: every
    gate dataset."""
    niche_probes: Annotated[list[NicheProbe], Field(max_length=32)] = []
    """Niche probes."""
    thresholds: Annotated[list[Threshold], Field(max_length=32)] = []
    """Bounds for the verdict."""
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 10
    """Bins of the expected calibration error."""
    abstain_below: Fraction | None = None
    """Confidence under which the model is counted as abstaining, outside its niche."""
    bootstrap: Bootstrap = Bootstrap()
    """Confidence intervals."""
    compare_ensemble: bool = True
    """Also evaluate the output ensemble of the parents."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seed of sampling and bootstrap: same model, suite and seed give the same scorecard."""

    rules = (
        Rule(
            cel="self.datasets.all(a, self.datasets.exists_one(b, b.name == a.name))",
            message="dataset names must be unique",
            check=lambda s: len({d.name for d in s.datasets}) == len(s.datasets),
            field_path=".datasets",
        ),
        Rule(
            cel="self.datasets.all(a,"
            " self.datasets.all(b, a.digest != b.digest || a.role == b.role))",
            message="a dataset digest appears under two roles: optimize, gate and holdout data"
            " must not overlap",
            check=lambda s: all(
                a.digest != b.digest or a.role == b.role for a in s.datasets for b in s.datasets
            ),
            field_path=".datasets",
        ),
        Rule(
            cel="self.metrics.all(m, self.datasets.exists(d, d.name == m.dataset))"
            " && (!has(self.nicheProbes) || self.nicheProbes.all(p,"
            " self.datasets.exists(d, d.name == p.dataset)))"
            " && (!has(self.thresholds) || self.thresholds.all(t,"
            " self.datasets.exists(d, d.name == t.dataset)))"
            " && (!has(self.objective) || self.objective.all(o,"
            " self.datasets.exists(d, d.name == o)))",
            message="metrics, nicheProbes, thresholds and objective must name datasets"
            " of the suite",
            check=lambda s: (
                {m.dataset for m in s.metrics}
                | {p.dataset for p in s.niche_probes}
                | {t.dataset for t in s.thresholds}
                | set(s.objective)
                <= {d.name for d in s.datasets}
            ),
            field_path=".datasets",
        ),
    )


class EvaluationSuiteStatus(ApiModel):
    """Whether the suite is valid, and its digest."""

    phase: Literal["Valid", "Invalid"] | None = None
    """Whether the operator accepted the suite."""
    digest: Digest | None = None
    """SHA-256 of the canonical JSON of the spec; every scorecard names it."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """Why it is invalid."""
    conditions: Conditions = []
    """Valid."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""


class EvaluationSuite(Resource):
    """A versioned, immutable evaluation suite."""

    kind: Literal["EvaluationSuite"] = "EvaluationSuite"
    """The resource kind."""
    spec: EvaluationSuiteSpec
    """The suite."""
    status: EvaluationSuiteStatus | None = None
    """Whether it is valid."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        plural="evaluationsuites",
        short_names=("esuite",),
        immutable_spec=True,
        printer_columns=(
            PrinterColumn("Version", ".spec.version"),
            PrinterColumn("Phase", ".status.phase"),
        ),
    )
