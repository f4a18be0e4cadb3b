"""``BreedingRun``: a search over merge recipes with Optuna's samplers that keeps a Pareto front.

Each trial is one merge recipe, scored on the suite's ``optimize`` data; a generation is
``budget.population`` consecutive trials. The search stops when its budget is spent, when
``budget.patience`` generations bring no better front, when a trial reaches every objective's
``goal``, when the wall clock runs out, or when more trials failed than allowed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Final, Literal

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
    ShortText,
    Spdx,
)
from studbook.api.operators import (
    METHODS_WITH_BASE,
    SPARSIFYING_METHODS,
    UNWEIGHTED_METHODS,
    MergeMethod,
)
from studbook.api.resource import CrdInfo, PrinterColumn, Resource

Strategy = Literal["nsga2", "cmaes", "tpe", "random"]
"""The Optuna sampler that proposes recipes: ``nsga2`` (NSGA-II, a genetic algorithm with Pareto
selection, for any number of objectives), ``cmaes`` (CMA-ES, one objective, numbers only),
``tpe`` (tree-structured Parzen estimator, one objective) or ``random`` (the baseline)."""

SINGLE_OBJECTIVE_STRATEGIES: Final = ("cmaes", "tpe")
"""Strategies that optimise exactly one objective."""

TensorKind = Literal["attention", "mlp"]
"""Kinds of per-layer tensors the merge engine can tell apart by name: the attention block
(query, key, value and output projections) and the feed-forward block."""

MAX_FRONT: Final = 32
"""Most Pareto points the status lists (the fittest); the ledger holds every trial."""

MAX_HISTORY: Final = 256
"""Most generation records the status lists (the latest); the ledger holds every trial."""


def _unique(items: str, key: str = "") -> str:
    """CEL: no two entries of the list ``items`` are equal (or share ``key``)."""
    field = f".{key}" if key else ""
    return f"self.{items}.all(a, self.{items}.exists_one(b, b{field} == a{field}))"


def _cel_list(values: frozenset[str]) -> str:
    return str(sorted(values))


class Objective(ApiModel):
    """One component of the objective vector, read from the suite's scorecard of each trial."""

    metric: Annotated[str, Field(min_length=1, max_length=128)]
    """``<dataset>/<metric>`` of the suite, for example ``sentiment-optimize/accuracy``."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether higher or lower is better."""
    weight: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    """Weight in the scalar fitness ``sum(weight * value)`` (values of minimized objectives
    negated) that picks the best trial of the Pareto front and summarises each generation."""
    threshold: float | None = None
    """Feasibility bound: a trial worse than this (below it when maximizing, above it when
    minimizing) is infeasible, never on the front, never best; NSGA-II and TPE steer away from
    it (CMA-ES and random search ignore it while sampling)."""
    goal: float | None = None
    """Target: the search stops with reason GoalReached once one feasible trial reaches the goal
    of every objective that has one (at least it when maximizing, at most it when minimizing).
    Without any goal the search runs until another bound stops it."""

    rules = (
        Rule(
            cel="!has(self.goal) || !has(self.threshold) || (self.direction == 'maximize'"
            " ? self.goal >= self.threshold : self.goal <= self.threshold)",
            message="goal must be at least as good as threshold in the objective's direction",
            check=lambda o: (
                o.goal is None
                or o.threshold is None
                or (o.goal >= o.threshold if o.direction == "maximize" else o.goal <= o.threshold)
            ),
            field_path=".goal",
        ),
    )


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


DEFAULT_WEIGHT_RANGE: Final = Range(min=0.0, max=1.0)
"""Per-parent weights searched when ``weightRange`` is not set."""
DEFAULT_DENSITY_RANGE: Final = Range(min=0.1, max=1.0)
"""Densities searched when ``densityRange`` is not set."""
DEFAULT_T_RANGE: Final = Range(min=0.0, max=1.0)
"""SLERP interpolation searched when ``tRange`` is not set."""

_BREADCRUMBS = frozenset({"breadcrumbs", "breadcrumbs_ties"})
_WEIGHTED = "self.methods.exists(m, !(m in " + _cel_list(UNWEIGHTED_METHODS) + "))"
_SPARSIFYING = "self.methods.exists(m, m in " + _cel_list(SPARSIFYING_METHODS) + ")"


def _within(r: Range | None, low: float, high: float, *, low_open: bool = False) -> bool:
    if r is None:
        return True
    return (r.min > low if low_open else r.min >= low) and r.max <= high


class SearchSpace(ApiModel):
    """The recipes the search may try: its genome.

    Coefficients come in groups: one for the whole model, plus one per block of layers or per
    layer (``layerGranularity``), each split further by ``tensorKinds``. Tensors outside the
    numbered layers, and those of no listed kind, take the whole model's coefficients.
    """

    methods: Annotated[list[MergeMethod], Field(min_length=1, max_length=9)]
    """Merge methods to choose from; with more than one, the method is a gene too."""
    weight_range: Range | None = None
    """Range of each parent's weight (default ``[0, 1]``), for every method but ``slerp`` and
    ``model_stock``, which take no weights. Parents are weighted against ``base`` when it is
    set (it takes no weight), else all of them."""
    density_range: Range | None = None
    """Range of density, the fraction of each task vector kept (default ``[0.1, 1]``), for the
    methods that sparsify (TIES, DARE, breadcrumbs). Breadcrumbs also drops the 1% largest
    entries, so with it the range must end at 0.99 or lower."""
    t_range: Range | None = None
    """Range of SLERP's interpolation from the first parent (0) to the second (1), default
    ``[0, 1]``; only with ``slerp``."""
    layer_granularity: Literal["model", "block", "layer"] = "model"
    """One coefficient group for the whole model, one per block of consecutive layers, or one
    per layer (each with the whole model's group for the other tensors)."""
    blocks: Annotated[int, Field(ge=2, le=64)] | None = None
    """Blocks of consecutive layers, as even as the layer count allows; required with
    granularity ``block``, and only then."""
    tensor_kinds: Annotated[list[TensorKind], Field(max_length=2)] = []
    """Give each listed kind of layer tensor its own coefficients in every group (for example
    ``[attention, mlp]``); empty: one set for all tensors of a group. Needs an architecture
    whose tensor names Studbook knows (BERT, GPT-2, Llama and its relatives)."""

    rules = (
        Rule(
            cel=_unique("methods"),
            message="methods must not list a method twice",
            check=lambda s: len(set(s.methods)) == len(s.methods),
            field_path=".methods",
        ),
        Rule(
            cel="self.methods.exists(m, m != 'model_stock')",
            message="model_stock has no coefficients to search: list another method too",
            check=lambda s: any(m != "model_stock" for m in s.methods),
            field_path=".methods",
        ),
        Rule(
            cel="!has(self.weightRange) || " + _WEIGHTED,
            message="weightRange is unused: slerp and model_stock take no weights",
            check=lambda s: s.weight_range is None or bool(set(s.methods) - UNWEIGHTED_METHODS),
            field_path=".weightRange",
        ),
        Rule(
            cel="!has(self.weightRange)"
            " || (self.weightRange.min >= -10.0 && self.weightRange.max <= 10.0)",
            message="weightRange must lie within [-10, 10], the range of a merge weight",
            check=lambda s: _within(s.weight_range, -10.0, 10.0),
            field_path=".weightRange",
        ),
        Rule(
            cel="!has(self.densityRange) || " + _SPARSIFYING,
            message="densityRange is unused: no method of methods sparsifies (ties, dare,"
            " breadcrumbs)",
            check=lambda s: s.density_range is None or bool(set(s.methods) & SPARSIFYING_METHODS),
            field_path=".densityRange",
        ),
        Rule(
            cel="!has(self.densityRange)"
            " || (self.densityRange.min > 0.0 && self.densityRange.max <= 1.0)",
            message="densityRange must lie within (0, 1]",
            check=lambda s: _within(s.density_range, 0.0, 1.0, low_open=True),
            field_path=".densityRange",
        ),
        Rule(
            cel="!self.methods.exists(m, m in " + _cel_list(_BREADCRUMBS) + ")"
            " || (has(self.densityRange) && self.densityRange.max <= 0.99)",
            message="breadcrumbs keeps density plus the 1% largest entries of each task vector:"
            " with breadcrumbs methods, set densityRange with max at most 0.99",
            check=lambda s: (
                not set(s.methods) & _BREADCRUMBS
                or (s.density_range is not None and s.density_range.max <= 0.99)
            ),
            field_path=".densityRange",
        ),
        Rule(
            cel="!has(self.tRange) || 'slerp' in self.methods",
            message="tRange is read by slerp only: list slerp in methods or leave tRange out",
            check=lambda s: s.t_range is None or "slerp" in s.methods,
            field_path=".tRange",
        ),
        Rule(
            cel="!has(self.tRange) || (self.tRange.min >= 0.0 && self.tRange.max <= 1.0)",
            message="tRange must lie within [0, 1]",
            check=lambda s: _within(s.t_range, 0.0, 1.0),
            field_path=".tRange",
        ),
        Rule(
            cel="(self.layerGranularity == 'block') == has(self.blocks)",
            message="blocks is required with layerGranularity block, and only then",
            check=lambda s: (s.layer_granularity == "block") == (s.blocks is not None),
            field_path=".blocks",
        ),
        Rule(
            cel="!has(self.tensorKinds) || " + _unique("tensorKinds"),
            message="tensorKinds must not list a kind twice",
            check=lambda s: len(set(s.tensor_kinds)) == len(s.tensor_kinds),
            field_path=".tensorKinds",
        ),
    )


class Nsga2(ApiModel):
    """NSGA-II's variation (Optuna's ``NSGAIISampler``); its population is budget.population."""

    crossover_probability: Fraction = 0.9
    """Probability that a child is a crossover of two parents rather than a copy of one."""
    swapping_probability: Fraction = 0.5
    """Uniform crossover: probability that a gene comes from the second parent."""
    mutation_probability: Fraction | None = None
    """Probability that a gene is resampled at random; default one over the number of genes."""


class Budget(ApiModel):
    """What the search may spend; it stops at whichever bound comes first."""

    max_trials: Annotated[int, Field(ge=1, le=10_000)]
    """Trials in all, failed ones included. Raising it on a finished run whose budget was spent
    continues the search where it stopped."""
    population: Annotated[int, Field(ge=2, le=1000)]
    """Trials per generation: NSGA-II's and CMA-ES's population; for every strategy the unit
    that ``patience`` and the status history count in."""
    parallelism: Annotated[int, Field(ge=1, le=1000)] = 1
    """Trials evaluated at once. Samplers propose while earlier trials still run, so more
    parallelism is faster and each proposal knows a little less."""
    max_failed_trials: Annotated[int, Field(ge=0, le=10_000)] | None = None
    """Failed trials tolerated; one more fails the run (reason TooManyFailures). Unset: no
    limit."""
    gpu_hours: Annotated[float, Field(gt=0.0)] | None = None
    """GPU hours the trials may spend; checked before each trial is handed out, so the trials
    already running finish."""
    max_duration_seconds: Annotated[int, Field(ge=60)] | None = None
    """Wall-clock seconds with trials running or ready to run; time a trial waits in a
    suspended queue does not count. Reached: the search stops (reason DurationExceeded)."""
    patience: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Stop (reason Converged) after this many completed generations in a row bring no better
    front: no feasible trial that no earlier one matches or beats in every objective."""

    rules = (
        Rule(
            cel="self.population <= self.maxTrials",
            message="population must not exceed maxTrials: the first generation would never"
            " complete",
            check=lambda b: b.population <= b.max_trials,
            field_path=".population",
        ),
    )


class DescendantTemplate(ApiModel):
    """What every descendant of the run carries besides its recipe."""

    compatibility: Compatibility
    """The contract of the merged artifacts; its ``architecture`` tells how layer tensors are
    named for block, layer and tensor-kind coefficients."""
    license: Spdx
    """Their licence."""
    risk_tier: RiskTier = "medium"
    """Their risk tier."""
    niche: Niche = Niche()
    """Their niche."""
    resources: Resources = Resources()
    """What each breeding Job asks of the cluster."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """The dtype of the merged weights of every trial and descendant."""


class BreedingRunSpec(ApiModel):
    """The search; once created only its budget changes (not the population), so a run resumes.

    A run continues from its ledger, which replays the trials in the order they were proposed
    and scored: every other field decides what the sampler proposes.
    """

    parent_pool: Annotated[list[ParentRef], Field(min_length=2, max_length=32)]
    """Parents recipes combine; each descendant lists all of them (for ``slerp``: the two
    besides ``base``)."""
    base: Name | None = None
    """The parent task vectors are taken against; required when methods use task vectors."""
    objectives: Annotated[list[Objective], Field(min_length=1, max_length=8)]
    """The objective vector."""
    search_space: SearchSpace
    """The recipes the search may try."""
    strategy: Strategy = "nsga2"
    """The Optuna sampler that proposes recipes: ``nsga2`` (any number of objectives),
    ``cmaes`` (one objective and one method), ``tpe`` (one objective) or ``random``."""
    nsga2: Nsga2 | None = None
    """NSGA-II's variation settings; only with strategy ``nsga2`` (defaults apply without)."""
    budget: Budget
    """What the search may spend."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seed of the sampler and of DARE's random masks: the same spec and seed, told the same
    results in the same order, propose the same recipes."""
    template: DescendantTemplate
    """What every descendant carries."""
    policy_ref: ObjectRef
    """The policy that admits the descendants."""
    evaluation_suite_ref: ObjectRef
    """The suite fitness is read from; the search tunes on its ``optimize`` data only."""

    rules = (
        Rule(
            cel="self.parentPool == oldSelf.parentPool"
            " && has(self.base) == has(oldSelf.base) && (!has(self.base) || self.base =="
            " oldSelf.base) && self.objectives == oldSelf.objectives"
            " && self.searchSpace == oldSelf.searchSpace && self.strategy == oldSelf.strategy"
            " && has(self.nsga2) == has(oldSelf.nsga2) && (!has(self.nsga2) || self.nsga2 =="
            " oldSelf.nsga2) && self.budget.population == oldSelf.budget.population"
            " && self.seed == oldSelf.seed && self.template == oldSelf.template"
            " && self.policyRef == oldSelf.policyRef"
            " && self.evaluationSuiteRef == oldSelf.evaluationSuiteRef",
            message="only budget may change, and not its population: the run continues from"
            " its ledger",
        ),
        Rule(
            cel=_unique("parentPool", "name"),
            message="parentPool must not list a parent twice",
            check=lambda s: len({p.name for p in s.parent_pool}) == len(s.parent_pool),
            field_path=".parentPool",
        ),
        Rule(
            cel="!has(self.base) || self.parentPool.exists(p, p.name == self.base)",
            message="base must name a parent of parentPool",
            check=lambda s: s.base is None or s.base in {p.name for p in s.parent_pool},
            field_path=".base",
        ),
        Rule(
            cel="has(self.base) || !self.searchSpace.methods.exists(m, m in "
            + _cel_list(METHODS_WITH_BASE)
            + ")",
            message="base is required: searchSpace.methods lists a task-vector method or"
            " model_stock",
            check=lambda s: (
                s.base is not None or not set(s.search_space.methods) & METHODS_WITH_BASE
            ),
            field_path=".base",
        ),
        Rule(
            cel="!('slerp' in self.searchSpace.methods)"
            " || size(self.parentPool) == (has(self.base) ? 3 : 2)",
            message="slerp merges exactly two parents: parentPool must hold two besides base",
            check=lambda s: (
                "slerp" not in s.search_space.methods
                or len(s.parent_pool) == (3 if s.base is not None else 2)
            ),
            field_path=".parentPool",
        ),
        Rule(
            cel=_unique("objectives", "metric"),
            message="objectives must not list a metric twice",
            check=lambda s: len({o.metric for o in s.objectives}) == len(s.objectives),
            field_path=".objectives",
        ),
        Rule(
            cel="!(self.strategy in " + str(list(SINGLE_OBJECTIVE_STRATEGIES)) + ")"
            " || size(self.objectives) == 1",
            message="strategies cmaes and tpe optimise one objective: keep one in objectives,"
            " or use nsga2 (or random) for several",
            check=lambda s: s.strategy not in SINGLE_OBJECTIVE_STRATEGIES or len(s.objectives) == 1,
            field_path=".strategy",
        ),
        Rule(
            cel="self.strategy != 'cmaes' || size(self.searchSpace.methods) == 1",
            message="strategy cmaes searches numbers only: list one method in"
            " searchSpace.methods, or use nsga2 or tpe, which choose the method too",
            check=lambda s: s.strategy != "cmaes" or len(s.search_space.methods) == 1,
            field_path=".strategy",
        ),
        Rule(
            cel="!has(self.nsga2) || self.strategy == 'nsga2'",
            message="nsga2 settings apply to strategy nsga2 only",
            check=lambda s: s.nsga2 is None or s.strategy == "nsga2",
            field_path=".nsga2",
        ),
    )


class TrialPoint(ApiModel):
    """One scored trial: a point of the Pareto front, or the best."""

    trial: Annotated[int, Field(ge=0)]
    """The trial's number in the ledger."""
    generation: Annotated[int, Field(ge=0)]
    """Its generation."""
    objectives: Annotated[dict[str, float], Field(max_length=8)]
    """Its value for each objective metric."""
    fitness: float
    """Its scalar fitness (see ``objectives[].weight``)."""
    recipe: Annotated[str, Field(max_length=512)]
    """The recipe in brief: method, whole-model weights and parameters, overrides; the ledger
    holds it in full."""
    descendant: Name | None = None
    """The Descendant made of this recipe, once created."""


class GenerationRecord(ApiModel):
    """One completed generation's summary."""

    generation: Annotated[int, Field(ge=0)]
    """The generation."""
    trials: Annotated[int, Field(ge=0)]
    """Its trials that succeeded."""
    failed: Annotated[int, Field(ge=0)] = 0
    """Its trials that failed."""
    best_fitness: float | None = None
    """Best scalar fitness among its feasible trials."""
    mean_fitness: float | None = None
    """Mean scalar fitness of its feasible trials."""
    front_size: Annotated[int, Field(ge=0)] = 0
    """Size of the Pareto front over this and every earlier generation."""
    improved: bool = False
    """Whether it brought a better front (see ``budget.patience``)."""


class BreedingRunStatus(ApiModel):
    """The search's progress, in the manner of Katib's experiments plus a Pareto front."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    """Where the search is: Succeeded once it stopped for its budget, convergence, goal or
    wall clock; Failed with too many failed trials or an unusable spec."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """Why it stopped or failed."""
    generation: Annotated[int, Field(ge=0)] = 0
    """The generation of the latest trial handed out."""
    trials_done: Annotated[int, Field(ge=0)] = 0
    """Trials that succeeded."""
    trials_failed: Annotated[int, Field(ge=0)] = 0
    """Trials that failed."""
    trials_running: Annotated[int, Field(ge=0)] = 0
    """Trials handed out and not finished."""
    gpu_hours_used: Annotated[float, Field(ge=0.0)] = 0.0
    """GPU hours the trials spent so far."""
    elapsed_seconds: Annotated[float, Field(ge=0.0)] = 0.0
    """Wall-clock seconds counted against ``budget.maxDurationSeconds``: time with trials
    running or ready to run, not time when every outstanding trial Job waits suspended in a
    queue."""
    elapsed_until: datetime | None = None
    """The moment ``elapsedSeconds`` counts up to. The next look adds the time since then if
    the run was not waiting on a queue meanwhile, so a restarted operator neither loses nor
    doubles any of it."""
    best: TrialPoint | None = None
    """The fittest feasible trial on the front, like Katib's ``currentOptimalTrial``."""
    pareto_front: Annotated[list[TrialPoint], Field(max_length=MAX_FRONT)] = []
    """The non-dominated feasible trials, fittest first; at most 32."""
    history: Annotated[list[GenerationRecord], Field(max_length=MAX_HISTORY)] = []
    """Summaries of completed generations, oldest first; the latest 256."""
    ledger_uri: ShortText | None = None
    """The store object that records every trial: recipe, scores, failures, timings."""
    conditions: Conditions = []
    """Progressing, and Complete with the reason the search stopped: BudgetSpent, Converged,
    GoalReached, DurationExceeded or TooManyFailures."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""


class BreedingRun(Resource):
    """A search over merge recipes; its best and Pareto-optimal recipes become Descendants."""

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
            PrinterColumn("Trials", ".status.trialsDone", type="integer"),
            PrinterColumn("Failed", ".status.trialsFailed", type="integer", priority=1),
            PrinterColumn("Best", ".status.best.trial", type="integer"),
            PrinterColumn("Fitness", ".status.best.fitness", type="number"),
            PrinterColumn("Descendant", ".status.best.descendant", priority=1),
            PrinterColumn("Message", ".status.message", priority=1),
        ),
    )
