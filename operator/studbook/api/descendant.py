"""``Descendant``: one immutable model artifact, bred from signed parents by a declared operator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from studbook.api.base import ApiModel, Rule
from studbook.api.common import (
    Compatibility,
    Conditions,
    Digest,
    Name,
    Niche,
    ObjectRef,
    OperatorKind,
    ParentRef,
    Resources,
    RiskTier,
    ShortText,
    Spdx,
    TrainingData,
)
from studbook.api.operators import OperatorSpec
from studbook.api.resource import CrdInfo, PrinterColumn, Resource
from studbook.api.scorecard import Scorecard

Phase = Literal[
    "Pending", "Admitted", "Breeding", "Evaluating", "Signing", "Ready", "Failed", "Rejected"
]
"""Where a descendant is in its flow; ``Ready``, ``Failed`` and ``Rejected`` are terminal."""

Stage = Literal["candidate", "shadow", "canary", "champion", "archived", "retired"]
"""The lifecycle stage of a descendant's artifact."""


def _parent_names(spec: Any) -> list[str]:
    return [p.name for p in spec.parents]


def _named_parents_exist(spec: Any) -> bool:
    names = set(_parent_names(spec))
    op = spec.operator
    wanted: list[str] = []
    if op.kind == "merge":
        wanted += [w.parent for w in op.merge.weights] + ([op.merge.base] if op.merge.base else [])
        for override in op.merge.overrides:
            wanted += [w.parent for w in override.weights or []]
    elif op.kind == "ensemble":
        wanted += [w.parent for w in op.ensemble.weights]
    elif op.kind == "router":
        wanted += [r.parent for r in op.router.routes] + [op.router.fallback]
    elif op.kind == "distill" and op.distill.student.parent:
        wanted.append(op.distill.student.parent)
    return set(wanted) <= names


def _has_teacher(spec: Any) -> bool:
    """A distill has a teacher: a parent that is not the student."""
    op = spec.operator
    if op.kind != "distill":
        return True
    return len(spec.parents) > (1 if op.distill.student.parent else 0)


def _datasets_declared(spec: Any) -> bool:
    config = spec.operator.config
    declared = {d.name for d in spec.data}
    used = set(getattr(config, "datasets", []))
    calibration = getattr(config, "calibration_dataset", None)
    if calibration:
        used.add(calibration)
    return used <= declared


class Origin(ApiModel):
    """The search that proposed a descendant's recipe: a BreedingRun's trial."""

    breeding_run: Name
    """The BreedingRun, in the descendant's namespace."""
    generation: Annotated[int, Field(ge=0)]
    """The trial's generation."""
    trial: Annotated[int, Field(ge=0)]
    """The trial's number in the run's ledger, which records its genes and scores."""


class DescendantSpec(ApiModel):
    """What to breed: parents, operator and contract. Immutable once created."""

    parents: Annotated[list[ParentRef], Field(max_length=32)] = []
    """The parents; empty only for operator ``import`` (a founder)."""
    operator: OperatorSpec
    """The breeding operator and its configuration."""
    compatibility: Compatibility
    """The contract the artifact will carry; weight-space operators need it equal across parents."""
    data: Annotated[list[TrainingData], Field(max_length=64)] = []
    """Data lineage: every dataset breeding reads, by URI and digest."""
    license: Spdx
    """The artifact's licence, as an SPDX identifier; it must be compatible with the parents'."""
    risk_tier: RiskTier = "medium"
    """How much harm a wrong answer of this model can do; it scales the gates."""
    niche: Niche = Niche()
    """Where the model is meant to work; evaluation probes it and the router reads it."""
    intended_use: Annotated[str, Field(max_length=2048)] | None = None
    """A sentence on what the model is for, and what it is not for."""
    resources: Resources = Resources()
    """What the breeding Job asks of the cluster."""
    policy_ref: ObjectRef
    """The BreedingPolicy that admits this descendant."""
    evaluation_suite_ref: ObjectRef
    """The EvaluationSuite whose scorecard gates this descendant."""
    origin: Origin | None = None
    """Set by a BreedingRun on the descendants it makes of its best and Pareto-optimal
    recipes: the run, generation and trial; the recipe itself is ``operator.merge``."""

    rules = (
        Rule(
            cel="(self.operator.kind == 'import')"
            " == (!has(self.parents) || size(self.parents) == 0)",
            message="parents must be empty for operator import and non-empty otherwise",
            check=lambda s: (s.operator.kind == "import") == (len(s.parents) == 0),
            field_path=".parents",
        ),
        Rule(
            cel="!has(self.parents)"
            " || self.parents.all(p, self.parents.exists_one(q, q.name == p.name))",
            message="parent names must be unique",
            check=lambda s: len(set(_parent_names(s))) == len(s.parents),
            field_path=".parents",
        ),
        Rule(
            cel="!(self.operator.kind in ['finetune', 'quantize', 'prune'])"
            " || size(self.parents) == 1",
            message="finetune, quantize and prune take exactly one parent",
            check=lambda s: (
                s.operator.kind not in ("finetune", "quantize", "prune") or len(s.parents) == 1
            ),
            field_path=".parents",
        ),
        Rule(
            cel="self.operator.kind != 'lora' || !has(self.operator.lora)"
            " || (has(self.operator.lora.compose)"
            " ? size(self.parents) >= 2 && size(self.operator.lora.compose.weights)"
            " == size(self.parents) : size(self.parents) == 1)",
            message="lora takes one parent to train on, or two or more adapters to compose with"
            " one compose weight per parent",
            check=lambda s: (
                s.operator.kind != "lora"
                or (
                    len(s.parents) == 1
                    if s.operator.lora.compose is None
                    else len(s.parents) >= 2
                    and len(s.operator.lora.compose.weights) == len(s.parents)
                )
            ),
            field_path=".parents",
        ),
        Rule(
            cel="!(self.operator.kind in ['merge', 'ensemble', 'router'])"
            " || size(self.parents) >= 2",
            message="merge, ensemble and router take at least two parents",
            check=lambda s: (
                s.operator.kind not in ("merge", "ensemble", "router") or len(s.parents) >= 2
            ),
            field_path=".parents",
        ),
        Rule(
            cel="self.operator.kind != 'merge' || !has(self.operator.merge)"
            " || self.operator.merge.method != 'slerp'"
            " || size(self.parents) == 2",
            message="slerp merges exactly two parents",
            check=lambda s: (
                s.operator.kind != "merge"
                or s.operator.merge.method != "slerp"
                or len(s.parents) == 2
            ),
            field_path=".parents",
        ),
        Rule(
            cel="self.operator.kind != 'merge' || !has(self.operator.merge)"
            " || ((!has(self.operator.merge.base)"
            " || self.parents.exists(p, p.name == self.operator.merge.base))"
            " && (!has(self.operator.merge.weights) || self.operator.merge.weights.all(w,"
            " self.parents.exists(p, p.name == w.parent))))",
            message="operator.merge.base and weights must name parents listed in parents",
            check=lambda s: s.operator.kind != "merge" or _named_parents_exist(s),
            field_path=".operator.merge",
        ),
        Rule(
            cel="self.operator.kind != 'router' || !has(self.operator.router)"
            " || (self.parents.exists(p, p.name =="
            " self.operator.router.fallback) && (!has(self.operator.router.routes)"
            " || self.operator.router.routes.all(r, self.parents.exists(p, p.name == r.parent))))",
            message="operator.router.fallback and routes must name parents listed in parents",
            check=lambda s: s.operator.kind != "router" or _named_parents_exist(s),
            field_path=".operator.router",
        ),
        Rule(
            cel="self.operator.kind != 'distill' || !has(self.operator.distill)"
            " || !has(self.operator.distill.student)"
            " || !has(self.operator.distill.student.parent)"
            " || self.parents.exists(p, p.name == self.operator.distill.student.parent)",
            message="operator.distill.student.parent must name a parent listed in parents",
            check=lambda s: s.operator.kind != "distill" or _named_parents_exist(s),
            field_path=".operator.distill.student.parent",
        ),
        Rule(
            cel="self.operator.kind != 'distill' || !has(self.operator.distill)"
            " || size(self.parents) > (has(self.operator.distill.student)"
            " && has(self.operator.distill.student.parent) ? 1 : 0)",
            message="distill needs a teacher: a parent other than operator.distill.student.parent",
            check=_has_teacher,
            field_path=".parents",
        ),
        Rule(
            cel="!has(self.data) || self.data.all(a, self.data.exists_one(b, b.name == a.name))",
            message="data names must be unique",
            check=lambda s: len({d.name for d in s.data}) == len(s.data),
            field_path=".data",
        ),
        Rule(
            cel=" && ".join(
                f"(self.operator.kind != '{kind}' || !has(self.operator.{kind})"
                f" || self.operator.{kind}.datasets.all(d,"
                " has(self.data) && self.data.exists(e, e.name == d)))"
                for kind in ("finetune", "lora", "distill")
            )
            + " && (self.operator.kind != 'quantize' || !has(self.operator.quantize)"
            " || !has(self.operator.quantize.calibrationDataset) || (has(self.data)"
            " && self.data.exists(e, e.name == self.operator.quantize.calibrationDataset)))",
            message="every dataset an operator reads must be declared in data",
            check=_datasets_declared,
            field_path=".data",
        ),
    )


class ArtifactStatus(ApiModel):
    """The sealed, signed artifact."""

    id: Digest
    """The content id: ``sha256:`` of the RFC 8785 canonical JSON of the sorted file list."""
    short_id: Annotated[str, Field(max_length=12)]
    """The first 12 hex digits of the id, for tables."""
    uri: ShortText
    """Where the package is stored."""
    size_bytes: Annotated[int, Field(ge=0)]
    """Total size of the package's files."""
    signature_uri: ShortText | None = None
    """Where the artifact's signature bundle is stored."""
    signer: ShortText | None = None
    """The identity that signed it (key fingerprint, certificate SAN or keyless identity)."""


class LineageStatus(ApiModel):
    """The lineage record, as written in the package's ``lineage.json``."""

    parent_ids: Annotated[list[Digest], Field(max_length=32)] = []
    """Artifact ids of the parents, in parent order."""
    operator: OperatorKind
    """The operator that produced the artifact."""
    config_hash: Digest
    """SHA-256 of the canonical JSON of the operator config."""
    data_digests: Annotated[list[Digest], Field(max_length=64)] = []
    """Digests of the datasets breeding read."""
    code_version: Annotated[str, Field(max_length=128)]
    """The Studbook trainer version that bred it, with the digest of the trainer image
    (``0.1.0@sha256:...``) where the Job pinned its image by digest."""
    created_at: datetime
    """When the artifact was sealed, in UTC."""
    origin: Origin | None = None
    """The BreedingRun trial whose recipe it is, for a descendant a search made."""


class ScorecardSummary(ApiModel):
    """The headline of the scorecard; the full scorecard is signed beside the artifact."""

    suite: Name
    """The EvaluationSuite."""
    suite_version: Annotated[str, Field(max_length=64)]
    """Its version."""
    suite_digest: Digest
    """Its digest."""
    verdict: Literal["pass", "fail", "inconclusive"]
    """Whether the gates passed."""
    net_gain: float | None = None
    """Objective gain over the best parent (negative: worse)."""
    fitness: float | None = None
    """The scalar fitness a search ranks by."""
    metrics: Annotated[dict[str, float], Field(max_length=64)] = {}
    """Headline metrics by name."""
    reasons: Annotated[list[Annotated[str, Field(max_length=512)]], Field(max_length=32)] = []
    """Why the verdict is what it is."""
    uri: ShortText | None = None
    """Where the signed scorecard is stored."""

    @classmethod
    def of(cls, card: Scorecard, uri: str) -> ScorecardSummary:
        """The headline of a scorecard stored at ``uri``."""
        return cls(
            suite=card.suite.name,
            suite_version=card.suite.version,
            suite_digest=card.suite.digest,
            verdict=card.verdict,
            net_gain=card.objective.net_gain if card.objective else None,
            fitness=card.objective.value if card.objective else None,
            metrics={m.key: m.value for m in card.metrics[:64]},
            reasons=card.reasons[:32],
            uri=uri,
        )


class ResourceProfile(ApiModel):
    """What the model costs to run and what breeding it cost."""

    parameters: Annotated[int, Field(ge=0)] | None = None
    """Parameter count."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Weight bytes on disk."""
    latency_ms_p50: Annotated[float, Field(ge=0.0)] | None = None
    """Median latency of one example on the evaluation hardware."""
    peak_memory_bytes: Annotated[int, Field(ge=0)] | None = None
    """Peak memory while serving one batch."""
    gpu_hours: Annotated[float, Field(ge=0.0)] | None = None
    """GPU hours spent breeding and evaluating."""


Step = Literal["breed", "evaluate", "sign"]
"""The steps a Descendant's Jobs run, in order."""
JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]
"""Where a Job is: Running once a pod of it is ready, Pending before."""


class JobRef(ApiModel):
    """One Kubernetes Job the descendant ran."""

    name: Name
    """The Job's name."""
    purpose: Step
    """Which step it runs."""
    attempt: Annotated[int, Field(ge=1)]
    """The attempt number of that step."""
    phase: JobPhase
    """The Job's outcome so far."""
    started_at: datetime | None = None
    """When it started."""
    finished_at: datetime | None = None
    """When it finished."""
    reason: Annotated[str, Field(max_length=1024)] | None = None
    """Why it failed, with the tail of its log."""


class DescendantStatus(ApiModel):
    """What the operator observed; written only by the operator."""

    phase: Phase = "Pending"
    """Where the descendant is in its flow."""
    stage: Stage | None = None
    """The lifecycle stage once the artifact exists."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """A human-readable summary, with the refusal or failure reason."""
    artifact: ArtifactStatus | None = None
    """The sealed artifact."""
    lineage: LineageStatus | None = None
    """The lineage record."""
    scorecard: ScorecardSummary | None = None
    """The scorecard summary."""
    resource_profile: ResourceProfile | None = None
    """Measured size, latency and cost."""
    jobs: Annotated[list[JobRef], Field(max_length=64)] = []
    """The Jobs run for this descendant, oldest first."""
    attempts: Annotated[int, Field(ge=0)] = 0
    """Breed attempts so far."""
    conditions: Conditions = []
    """Admitted, Bred, Evaluated, Signed and Ready."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""


class Descendant(Resource):
    """One immutable model artifact: its parents, operator and contract, and what came of them."""

    kind: Literal["Descendant"] = "Descendant"
    """The resource kind."""
    spec: DescendantSpec
    """What to breed."""
    status: DescendantStatus | None = None
    """What came of it."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        plural="descendants",
        short_names=("desc",),
        immutable_spec=True,
        printer_columns=(
            PrinterColumn("Operator", ".spec.operator.kind"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Stage", ".status.stage"),
            PrinterColumn("Artifact", ".status.artifact.shortId"),
            PrinterColumn("Verdict", ".status.scorecard.verdict"),
            PrinterColumn("Fitness", ".status.scorecard.fitness", type="number", priority=1),
            PrinterColumn("Signer", ".status.artifact.signer", priority=1),
            # Why it waits, why it failed, or what it is: one sentence.
            PrinterColumn("Message", ".status.message"),
        ),
    )
