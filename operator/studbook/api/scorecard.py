"""The scorecard: the evidence every gate reads. Versioned; signed beside the artifact.

A scorecard holds no timestamp, so the same model, suite and seed give the same scorecard, byte
for byte in canonical JSON, except for what is measured rather than computed: the latency in
``profile`` (and the ``latency_ms`` metric, when a suite asks for it).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from studbook.api.base import ApiModel, Rule
from studbook.api.common import Digest, Name

SCORECARD_SCHEMA: Final = "scorecard.studbook.dev/v1"
"""The schema version every scorecard names."""

Verdict = Literal["pass", "fail", "inconclusive"]


class SuiteRef(ApiModel):
    """The exact suite a scorecard was computed with."""

    name: Name
    """The EvaluationSuite."""
    version: Annotated[str, Field(max_length=64)]
    """Its version."""
    digest: Digest
    """Its digest."""


class MetricResult(ApiModel):
    """One metric on one dataset, with its bootstrap confidence interval."""

    dataset: Name
    """The dataset."""
    metric: Annotated[str, Field(min_length=1, max_length=64)]
    """The metric."""
    value: float
    """The point estimate."""
    ci_low: float | None = None
    """Lower end of the confidence interval."""
    ci_high: float | None = None
    """Upper end of the confidence interval."""
    n: Annotated[int, Field(ge=0)]
    """Examples it was computed on."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether higher or lower is better."""

    @property
    def key(self) -> str:
        """``<dataset>/<metric>``, the name gates and objectives use."""
        return f"{self.dataset}/{self.metric}"


class NicheResult(ApiModel):
    """A parent's niche probed on the child, so that a forgotten skill shows."""

    probe: Name
    """The niche probe."""
    parent: Name
    """The parent whose niche it is."""
    metric: Annotated[str, Field(max_length=64)]
    """The probe's metric."""
    parent_value: float
    """The parent on its niche."""
    child_value: float
    """The child on the parent's niche."""

    @property
    def regression(self) -> float:
        """How much the child lost on the parent's niche (negative: it gained)."""
        return self.parent_value - self.child_value


class Comparison(ApiModel):
    """Another model evaluated in the same run, for reference."""

    role: Literal["parent", "baseline", "ensemble", "champion"]
    """What it is: a parent, a simple baseline, the parents' output ensemble, the champion."""
    name: Annotated[str, Field(min_length=1, max_length=128)]
    """Its name, for example the parent's or ``uniform-merge`` or ``majority-class``."""
    artifact_id: Digest | None = None
    """Its artifact id, when it has one."""
    metrics: Annotated[dict[str, float], Field(max_length=64)]
    """Its metrics by ``<dataset>/<metric>``."""


class Objective(ApiModel):
    """The objective value and the net gain over the best parent."""

    metrics: Annotated[list[str], Field(min_length=1, max_length=8)]
    """The ``<dataset>/<metric>`` keys averaged into the objective."""
    value: float
    """The child's objective."""
    best_parent: Name | None = None
    """The parent with the best objective."""
    best_parent_value: float | None = None
    """That parent's objective."""
    net_gain: float | None = None
    """``value - best_parent_value`` (for a founder, none)."""


class Calibration(ApiModel):
    """Calibration and abstention on one dataset."""

    dataset: Name
    """The dataset."""
    ece: Annotated[float, Field(ge=0.0, le=1.0)]
    """Expected calibration error."""
    abstention_rate: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """Share of examples under the suite's abstention confidence."""
    outside_niche: bool | None = None
    """Whether the dataset probes a niche the subject does not declare (from the suite's niche
    probes): there abstaining is right and a confident answer is a guess. Unset when no probe
    uses the dataset."""


class Profile(ApiModel):
    """What the model costs to run, measured during evaluation."""

    parameters: Annotated[int, Field(ge=0)]
    """Parameter count."""
    size_bytes: Annotated[int, Field(ge=0)]
    """Weight bytes."""
    latency_ms_per_example: Annotated[float, Field(ge=0.0)]
    """Mean latency per example, batched, on the evaluation hardware."""


class Scorecard(ApiModel):
    """The complete evaluation of one artifact on one suite."""

    schema_version: Literal["scorecard.studbook.dev/v1"] = SCORECARD_SCHEMA
    """The scorecard schema."""
    subject: Digest
    """The artifact id evaluated; the signed scorecard binds to it."""
    suite: SuiteRef
    """The suite."""
    seed: Annotated[int, Field(ge=0)]
    """The seed of sampling and bootstrap."""
    metrics: Annotated[list[MetricResult], Field(max_length=256)]
    """Every metric."""
    niches: Annotated[list[NicheResult], Field(max_length=64)] = []
    """Parent niches probed on the child."""
    comparisons: Annotated[list[Comparison], Field(max_length=32)] = []
    """Parents, baseline, ensemble and champion, evaluated in the same run."""
    calibration: Annotated[list[Calibration], Field(max_length=32)] = []
    """Calibration per dataset."""
    profile: Profile | None = None
    """Resource profile."""
    objective: Objective | None = None
    """Objective and net gain."""
    verdict: Verdict
    """The suite's own verdict (thresholds); policy and promotion gates read the rest."""
    reasons: Annotated[list[str], Field(max_length=64)] = []
    """Why the verdict is what it is."""
    probed: Annotated[list[Name], Field(max_length=32)] = []
    """Models (the subject or comparisons, by name) without a classification head, scored
    through a linear probe fitted on the suite's ``optimize`` datasets: their scores measure the
    encoder's features, as MTEB scores encoders."""

    rules = (
        Rule(
            cel="self.metrics.all(a, self.metrics.exists_one(b, b.dataset == a.dataset"
            " && b.metric == a.metric))",
            message="each <dataset>/<metric> may appear once in metrics",
            check=lambda s: len({m.key for m in s.metrics}) == len(s.metrics),
            field_path=".metrics",
        ),
    )

    def metric(self, key: str) -> MetricResult | None:
        """The result of ``<dataset>/<metric>``, if reported."""
        return next((m for m in self.metrics if m.key == key), None)


def scorecard_json_schema() -> dict[str, object]:
    """The JSON Schema of the scorecard, as published in ``docs/scorecard.schema.json``."""
    schema = Scorecard.model_json_schema(by_alias=True)
    schema["$id"] = f"https://studbook.dev/schemas/{SCORECARD_SCHEMA}.json"
    return schema
