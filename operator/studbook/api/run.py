"""``BreedingRun``: an evolutionary search over merge recipes that keeps a Pareto front."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from studbook.api.base import ApiModel, Rule
from studbook.api.common import (
    Compatibility,
    Conditions,
    Fraction,
    Name,
    Niche,
    ObjectRef,
    ParentRef,
    Resources,
    RiskTier,
    Spdx,
)
from studbook.api.operators import MergeMethod
from studbook.api.resource import CrdInfo, PrinterColumn, Resource


class Objective(ApiModel):
    """One component of the objective vector."""

    metric: Annotated[str, Field(min_length=1, max_length=128)]
    """``<dataset>/<metric>`` of the suite, for example ``sentiment-gate/accuracy``."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether higher or lower is better."""
    weight: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    """Weight in the scalar fitness that ranks within a front."""
    threshold: float | None = None
    """Candidates worse than this are infeasible."""


class Range(ApiModel):
    """A closed interval."""

    min: float
    """Lower bound."""
    max: float
    """Upper bound."""

    rules = (
        Rule(
            cel="self.min <= self.max",
            message="min must not exceed max",
            check=lambda r: r.min <= r.max,
            field_path=".min",
        ),
    )


class SearchSpace(ApiModel):
    """The recipes the search may try."""

    methods: Annotated[list[MergeMethod], Field(min_length=1, max_length=9)]
    """Merge methods to choose from."""
    weight_range: Range = Range(min=0.0, max=1.0)
    """Range of per-parent weights."""
    density_range: Range = Range(min=0.1, max=1.0)
    """Range of density, for methods that sparsify."""
    layer_granularity: Literal["model", "block", "layer"] = "model"
    """One coefficient set for the whole model, per block of layers, or per layer."""
    blocks: Annotated[int, Field(ge=1, le=64)] = 4
    """Blocks the layers are split into with granularity ``block``."""


class Strategy(ApiModel):
    """How offspring are made."""

    algorithm: Literal["genetic", "random"] = "genetic"
    """A genetic algorithm with Pareto selection, or random sampling as a baseline."""
    mutation_rate: Fraction = 0.2
    """Probability that a gene mutates."""
    mutation_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """Standard deviation of a mutation, relative to the gene's range."""
    crossover_rate: Fraction = 0.7
    """Probability that two parents' recipes recombine."""


class Budget(ApiModel):
    """What the search may spend; it stops at whichever bound comes first."""

    generations: Annotated[int, Field(ge=1, le=1000)]
    """Generations."""
    population: Annotated[int, Field(ge=2, le=1000)]
    """Recipes per generation."""
    max_descendants: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Descendants created in all."""
    parallelism: Annotated[int, Field(ge=1, le=1000)] = 2
    """Descendants bred at once."""
    gpu_hours: Annotated[float, Field(gt=0.0)] | None = None
    """GPU hours in all."""
    patience: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Stop after this many generations without a better front."""


class Selection(ApiModel):
    """Which recipes survive."""

    elites: Annotated[int, Field(ge=0, le=100)] = 2
    """Best recipes carried over unchanged."""
    diversity: Literal["crowding", "none"] = "crowding"
    """Prefer spread along the front (crowding distance) or not."""
    tournament_size: Annotated[int, Field(ge=2, le=16)] = 2
    """Recipes compared per tournament."""


class DescendantTemplate(ApiModel):
    """What every descendant of the run carries besides its recipe."""

    compatibility: Compatibility
    """The contract of the merged artifacts."""
    license: Spdx
    """Their licence."""
    risk_tier: RiskTier = "medium"
    """Their risk tier."""
    niche: Niche = Niche()
    """Their niche."""
    resources: Resources = Resources()
    """What each breeding Job asks of the cluster."""


class BreedingRunSpec(ApiModel):
    """The search."""

    parent_pool: Annotated[list[ParentRef], Field(min_length=2, max_length=32)]
    """Parents recipes combine."""
    base: Name | None = None
    """The parent task vectors are taken against; required when methods use task vectors."""
    objectives: Annotated[list[Objective], Field(min_length=1, max_length=8)]
    """The objective vector."""
    search_space: SearchSpace
    """The recipes the search may try."""
    strategy: Strategy = Strategy()
    """How offspring are made."""
    budget: Budget
    """What the search may spend."""
    selection: Selection = Selection()
    """Which recipes survive."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seed: the same run spec and seed propose the same recipes."""
    template: DescendantTemplate
    """What every descendant carries."""
    policy_ref: ObjectRef
    """The policy that admits the descendants."""
    evaluation_suite_ref: ObjectRef
    """The suite fitness is read from; the search tunes on its ``optimize`` data only."""

    rules = (
        Rule(
            cel="self.selection.elites < self.budget.population",
            message="selection.elites must be smaller than budget.population",
            check=lambda s: s.selection.elites < s.budget.population,
            field_path=".selection.elites",
        ),
        Rule(
            cel="!has(self.base) || self.parentPool.exists(p, p.name == self.base)",
            message="base must name a parent of parentPool",
            check=lambda s: s.base is None or s.base in {p.name for p in s.parent_pool},
            field_path=".base",
        ),
    )


class ParetoPoint(ApiModel):
    """A descendant on the front and its objective values."""

    descendant: Name
    """The Descendant."""
    objectives: Annotated[dict[str, float], Field(max_length=8)]
    """Its value for each objective metric."""
    fitness: float | None = None
    """Its scalar fitness."""


class GenerationRecord(ApiModel):
    """One generation's summary."""

    generation: Annotated[int, Field(ge=0)]
    """The generation."""
    evaluated: Annotated[int, Field(ge=0)]
    """Recipes evaluated."""
    best_fitness: float | None = None
    """Best scalar fitness."""
    mean_fitness: float | None = None
    """Mean scalar fitness."""
    front_size: Annotated[int, Field(ge=0)] = 0
    """Size of the Pareto front after the generation."""


class BreedingRunStatus(ApiModel):
    """The search's progress."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Stopped"] = "Pending"
    """Where the search is."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """Why it stopped or failed."""
    generation: Annotated[int, Field(ge=0)] = 0
    """The current generation."""
    descendants_created: Annotated[int, Field(ge=0)] = 0
    """Descendants created so far."""
    gpu_hours_used: Annotated[float, Field(ge=0.0)] = 0.0
    """GPU hours spent so far."""
    best: ParetoPoint | None = None
    """The fittest descendant so far."""
    pareto_front: Annotated[list[ParetoPoint], Field(max_length=256)] = []
    """The non-dominated descendants."""
    history: Annotated[list[GenerationRecord], Field(max_length=1000)] = []
    """Per-generation summaries."""
    conditions: Conditions = []
    """Progressing and Complete."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""


class BreedingRun(Resource):
    """An evolutionary search over merge recipes; it creates Descendants."""

    kind: Literal["BreedingRun"] = "BreedingRun"
    """The resource kind."""
    spec: BreedingRunSpec
    """The search."""
    status: BreedingRunStatus | None = None
    """Its progress."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        plural="breedingruns",
        short_names=("brun",),
        printer_columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Generation", ".status.generation", type="integer"),
            PrinterColumn("Best", ".status.best.descendant"),
            PrinterColumn("Fitness", ".status.best.fitness", type="number"),
        ),
    )
