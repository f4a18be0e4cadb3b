"""The search core of a ``BreedingRun``: propose merge recipes, take scores, decide when to stop.

Optuna's samplers propose (NSGA-II, CMA-ES, TPE or random search, seeded); this module turns a
run's ``searchSpace`` into a fixed set of Optuna distributions (:class:`Genome`), each proposal
into the :class:`~studbook.api.operators.MergeConfig` a Descendant would carry, and the results
into a Pareto front, a best trial, per-generation history and a stop decision (:class:`Search`).
The controller and ``studbook breed`` drive it alike::

    search = Search(spec, num_layers=6)          # or Search.replay(spec, ledger)
    while not (decision := search.decide(elapsed)).stop:
        for candidate in search.ask(free_slots):
            ...                                  # merge and score candidate.recipe
        search.tell(number, Scores({...}))       # or Failure("why"), in any order

Pure: no Kubernetes, no torch, no I/O; the Optuna study lives in memory and is rebuilt from the
run's :class:`~studbook.api.ledger.Ledger`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler, CmaEsSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.trial import Trial, TrialState

from studbook.api import reasons
from studbook.api.ledger import Ledger, TrialRecord
from studbook.api.operators import (
    SPARSIFYING_METHODS,
    UNWEIGHTED_METHODS,
    MergeConfig,
    MergeMethod,
    MergeOverride,
    MergeParameters,
    ParentWeight,
)
from studbook.api.run import (
    DEFAULT_DENSITY_RANGE,
    DEFAULT_T_RANGE,
    DEFAULT_WEIGHT_RANGE,
    MAX_FRONT,
    MAX_HISTORY,
    BreedingRunSpec,
    GenerationRecord,
    Nsga2,
    Objective,
    Range,
    SearchSpace,
    TensorKind,
    TrialPoint,
)

# Optuna logs every result at INFO through its own handler; the ledger and status record them.
optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_OVERRIDES: Final = 64
"""Most overrides a merge config holds (``MergeConfig.overrides``)."""


class SearchSpecError(ValueError):
    """A run spec the search cannot run, beyond what the API's own rules refuse."""


class LedgerMismatch(ValueError):
    """A ledger that does not replay under the spec: written by another spec, seed or Optuna."""


# --- the genome --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorLayout:
    """How an architecture family names the tensors of its numbered layers."""

    layer: str
    """Glob of layer ``{}``'s tensor names up to the dot after the index."""
    kinds: Mapping[TensorKind, tuple[str, ...]]
    """Globs of the rest of the name, per tensor kind."""

    def globs(self, indices: Sequence[str], kind: TensorKind | None) -> tuple[str, ...]:
        """Globs over the tensors of the layers ``indices`` (index globs) of one kind, or all."""
        rests = self.kinds[kind] if kind is not None else ("*",)
        return tuple(self.layer.format(i) + rest for i in indices for rest in rests)


_DECODER = TensorLayout("*.layers.{}.", {"attention": ("self_attn.*",), "mlp": ("mlp.*",)})

LAYOUTS: Final[Mapping[str, TensorLayout]] = {
    # BERT's feed-forward block is ``intermediate`` plus the layer's own ``output``; the
    # attention block has an ``output`` too, inside ``attention.``, which the glob keeps apart.
    "Bert": TensorLayout(
        "*.layer.{}.", {"attention": ("attention.*",), "mlp": ("intermediate.*", "output.*")}
    ),
    "GPT2": TensorLayout("*.h.{}.", {"attention": ("attn.*",), "mlp": ("mlp.*",)}),
    "Llama": _DECODER,
    "Mistral": _DECODER,
    "Qwen2": _DECODER,
    "Qwen3": _DECODER,
    "Gemma": _DECODER,
    "Phi3": _DECODER,
}
"""Tensor layouts by architecture-name prefix (``BertForSequenceClassification``: ``Bert``). The
layer globs name the same containers the merge engine reads layer indices from."""


def layout_for(architecture: str) -> TensorLayout | None:
    """The tensor layout of an architecture, or ``None`` when Studbook does not know it."""
    return next((lay for name, lay in LAYOUTS.items() if architecture.startswith(name)), None)


def index_globs(first: int, last: int) -> list[str]:
    """Globs that match exactly the decimal numbers ``first`` to ``last``.

    A glob's character class covers one digit, so a range splits where its tens change:
    8 to 15 is ``[8-9]`` and ``1[0-5]``.
    """
    out = []
    n = first
    while n <= last:
        tens, low = divmod(n, 10)
        high = min(9, last - tens * 10)
        head = str(tens) if tens else ""
        out.append(head + (str(low) if low == high else f"[{low}-{high}]"))
        n = tens * 10 + high + 1
    return out


@dataclass(frozen=True)
class Scope:
    """One coefficient group of the genome."""

    name: str
    """``model``, or the group's block or layer and kind, for example ``block1.mlp``."""
    tensors: tuple[str, ...] = ()
    """Globs over the group's tensor names; empty for ``model``, the merge's own coefficients,
    which every tensor no override matches takes."""


def _scopes(spec: BreedingRunSpec, num_layers: int | None) -> tuple[Scope, ...]:
    space = spec.search_space
    whole = Scope("model")
    if space.layer_granularity == "model" and not space.tensor_kinds:
        return (whole,)
    architecture = spec.template.compatibility.architecture
    layout = layout_for(architecture)
    if layout is None:
        known = ", ".join(LAYOUTS)
        raise SearchSpecError(
            f"template.compatibility.architecture {architecture} names its layer tensors in a"
            f" way Studbook does not know (it knows {known}): use layerGranularity model"
            " without tensorKinds"
        )
    groups: list[tuple[str, list[str]]]
    if space.layer_granularity == "model":
        groups = [("", ["*"])]
    else:
        if num_layers is None:
            raise SearchSpecError(
                f"layerGranularity {space.layer_granularity} needs the parents' layer count"
            )
        if space.layer_granularity == "layer":
            groups = [(f"layer{i}", [str(i)]) for i in range(num_layers)]
        else:
            blocks = space.blocks or 0
            if blocks > num_layers:
                raise SearchSpecError(
                    f"searchSpace.blocks {blocks} exceeds the parents' {num_layers} layers"
                )
            bounds = [b * num_layers // blocks for b in range(blocks + 1)]
            groups = [
                (f"block{b}", index_globs(bounds[b], bounds[b + 1] - 1)) for b in range(blocks)
            ]
    kinds: list[TensorKind | None] = [*space.tensor_kinds] or [None]
    scopes = [whole]
    for group, indices in groups:
        for kind in kinds:
            name = ".".join(part for part in (group, kind) if part)
            scopes.append(Scope(name, layout.globs(indices, kind)))
    overrides = sum(len(s.tensors) for s in scopes)
    if overrides > MAX_OVERRIDES:
        raise SearchSpecError(
            f"this search space needs {overrides} overrides per recipe, more than the"
            f" {MAX_OVERRIDES} a merge config holds: use fewer blocks, block instead of layer"
            " granularity, or fewer tensorKinds"
        )
    return tuple(scopes)


def _float(r: Range) -> FloatDistribution:
    return FloatDistribution(r.min, r.max)


class Genome:
    """A run's search space as fixed Optuna distributions, and the recipe a trial's genes make.

    Genes are named ``method``, ``<scope>/weight/<parent>``, ``<scope>/density`` and
    ``<scope>/t``. Every trial samples every gene, also those its method ignores (a density
    under ``linear``): CMA-ES and NSGA-II need one fixed search space, and define-by-run
    conditional genes would split it.
    """

    def __init__(self, spec: BreedingRunSpec, num_layers: int | None = None) -> None:
        space: SearchSpace = spec.search_space
        self.methods = tuple(space.methods)
        """The merge methods to choose from."""
        self.pool = tuple(p.name for p in spec.parent_pool)
        """Every parent of the run."""
        self.weighted = tuple(name for name in self.pool if name != spec.base)
        """The parents that take weights (all but the base)."""
        self.scopes = _scopes(spec, num_layers)
        """The coefficient groups; the first is the whole model."""
        self._base = spec.base
        self._dtype = spec.template.dtype
        self._seed = spec.seed
        methods = set(self.methods)
        distributions: dict[str, BaseDistribution] = {}
        if len(self.methods) > 1:
            distributions["method"] = CategoricalDistribution(self.methods)
        for scope in self.scopes:
            if methods - UNWEIGHTED_METHODS:
                weight = _float(space.weight_range or DEFAULT_WEIGHT_RANGE)
                for parent in self.weighted:
                    distributions[f"{scope.name}/weight/{parent}"] = weight
            if methods & SPARSIFYING_METHODS:
                distributions[f"{scope.name}/density"] = _float(
                    space.density_range or DEFAULT_DENSITY_RANGE
                )
            if "slerp" in methods:
                distributions[f"{scope.name}/t"] = _float(space.t_range or DEFAULT_T_RANGE)
        self.distributions: Mapping[str, BaseDistribution] = distributions
        """Every gene's distribution, in the order trials sample them."""

    def method(self, params: Mapping[str, float | str]) -> MergeMethod:
        """The merge method a trial's genes choose."""
        chosen = params.get("method", self.methods[0])
        return next(m for m in self.methods if m == chosen)

    def parents(self, params: Mapping[str, float | str]) -> tuple[str, ...]:
        """The parents a descendant of these genes lists: SLERP's two, else the whole pool."""
        return self.weighted if self.method(params) == "slerp" else self.pool

    def recipe(self, params: Mapping[str, float | str]) -> MergeConfig:
        """The merge recipe of a trial's genes."""
        method = self.method(params)

        def number(gene: str) -> float:
            return float(params[gene])

        def coefficients(scope: Scope) -> tuple[list[ParentWeight], MergeParameters]:
            weights = (
                []
                if method in UNWEIGHTED_METHODS
                else [
                    ParentWeight(parent=p, weight=number(f"{scope.name}/weight/{p}"))
                    for p in self.weighted
                ]
            )
            parameters = MergeParameters(
                density=(
                    number(f"{scope.name}/density") if method in SPARSIFYING_METHODS else None
                ),
                t=number(f"{scope.name}/t") if method == "slerp" else None,
            )
            return weights, parameters

        weights, parameters = coefficients(self.scopes[0])
        overrides = []
        if method != "model_stock":  # model stock has no coefficients to override
            for scope in self.scopes[1:]:
                scope_weights, scope_parameters = coefficients(scope)
                overrides += [
                    MergeOverride(
                        tensors=glob,
                        weights=scope_weights or None,
                        parameters=scope_parameters,
                    )
                    for glob in scope.tensors
                ]
        return MergeConfig(
            method=method,
            base=None if method == "slerp" else self._base,
            weights=weights,
            parameters=parameters,
            overrides=overrides,
            dtype=self._dtype,
            seed=self._seed,
        )


def summary(recipe: MergeConfig, limit: int = 512) -> str:
    """A recipe in one line: method, whole-model weights and parameters, override count."""
    parts = [f"{w.parent}={w.weight:.3g}" for w in recipe.weights]
    parts += [f"{k}={v:.3g}" for k, v in recipe.parameters.model_dump(exclude_none=True).items()]
    if recipe.overrides:
        parts.append(f"+{len(recipe.overrides)} overrides")
    line = f"{recipe.method}: {' '.join(parts)}" if parts else recipe.method
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- the samplers ------------------------------------------------------------------------------


def _nsga2(spec: BreedingRunSpec) -> BaseSampler:
    variation = spec.nsga2 or Nsga2()
    return NSGAIISampler(
        population_size=spec.budget.population,
        crossover_prob=variation.crossover_probability,
        swapping_prob=variation.swapping_probability,
        mutation_prob=variation.mutation_probability,
        seed=spec.seed,
    )


SAMPLERS: Final[Mapping[str, Callable[[BreedingRunSpec], BaseSampler]]] = {
    "nsga2": _nsga2,
    "cmaes": lambda spec: CmaEsSampler(seed=spec.seed, popsize=spec.budget.population),
    "tpe": lambda spec: TPESampler(seed=spec.seed),
    "random": lambda spec: RandomSampler(seed=spec.seed),
}
"""The Optuna sampler of each strategy, seeded with the run's seed."""


# --- proposals, results and decisions ----------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A proposed trial: what to merge and score."""

    number: int
    """The trial's number; tell its result under it."""
    generation: int
    """Its generation."""
    params: Mapping[str, float | str]
    """Its genes."""
    recipe: MergeConfig
    """The merge recipe to score (and, for the best and the front, to breed)."""
    parents: tuple[str, ...]
    """The parents a descendant of the recipe lists."""


@dataclass(frozen=True)
class Scores:
    """A trial that was scored."""

    values: Mapping[str, float]
    """The value of every objective metric."""
    seconds: float = 0.0
    """Wall-clock seconds of its evaluation."""
    gpu_seconds: float = 0.0
    """GPU seconds it spent."""


@dataclass(frozen=True)
class Failure:
    """A trial that could not be scored."""

    reason: str
    """Why, for people."""
    seconds: float = 0.0
    """Wall-clock seconds it ran."""
    gpu_seconds: float = 0.0
    """GPU seconds it spent."""


class StopReason(StrEnum):
    """Why a search stops; the values are the reasons of the run's Complete condition."""

    TOO_MANY_FAILURES = reasons.TOO_MANY_FAILURES
    GOAL_REACHED = reasons.GOAL_REACHED
    CONVERGED = reasons.CONVERGED
    DURATION_EXCEEDED = reasons.DURATION_EXCEEDED
    BUDGET_SPENT = reasons.BUDGET_SPENT


@dataclass(frozen=True)
class Decision:
    """Whether the search goes on, and if not, why."""

    reason: StopReason | None = None
    """Why it stops; ``None`` while it goes on."""
    message: str = ""
    """The reason in words."""

    @property
    def stop(self) -> bool:
        """Whether the search is over; trials still running are abandoned."""
        return self.reason is not None

    @property
    def failed(self) -> bool:
        """Whether it ended as a failure (phase Failed) rather than a result."""
        return self.reason is StopReason.TOO_MANY_FAILURES


# --- Pareto bookkeeping ------------------------------------------------------------------------


Point = tuple[float, ...]
"""Objective values, each signed so that higher is better."""


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def _covers(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere (equal included)."""
    return all(x >= y for x, y in zip(a, b, strict=True))


def _meets(objective: Objective, value: float, bound: float | None) -> bool:
    if bound is None:
        return True
    return value >= bound if objective.direction == "maximize" else value <= bound


# --- the search --------------------------------------------------------------------------------


class Search:
    """An in-memory Optuna study over a run's genome, with the run's budget and stop rules."""

    def __init__(self, spec: BreedingRunSpec, num_layers: int | None = None) -> None:
        self.spec = spec
        """The run spec."""
        self.genome = Genome(spec, num_layers)
        """The genome trials sample."""
        numbers = sum(isinstance(d, FloatDistribution) for d in self.genome.distributions.values())
        if spec.strategy == "cmaes" and numbers < 2:
            raise SearchSpecError(
                f"strategy cmaes needs two or more searched numbers, and this search space has"
                f" {numbers}: use tpe"
            )
        self._num_layers = num_layers
        self._objectives = spec.objectives
        self._signs = tuple(1.0 if o.direction == "maximize" else -1.0 for o in spec.objectives)
        self._study = optuna.create_study(
            directions=[o.direction for o in spec.objectives],
            sampler=SAMPLERS[spec.strategy](spec),
        )
        self._trials: list[TrialRecord] = []
        self._running: dict[int, Trial] = {}
        self._told = 0
        self._history: list[GenerationRecord] = []
        self._front: list[Point] = []  # of the completed generations
        self._goal: int | None = None

    # -- proposals and results --

    def ask(self, n: int) -> list[Candidate]:
        """Up to ``n`` new trials, as the budget and ``parallelism`` allow; none once stopped.

        The wall clock is the caller's: it asks :meth:`decide` with the elapsed seconds first.
        """
        if self.decide().stop or self._gpu_spent():
            return []
        budget = self.spec.budget
        room = min(
            n, budget.parallelism - len(self._running), budget.max_trials - len(self._trials)
        )
        return [self._ask() for _ in range(max(0, room))]

    def _ask(self) -> Candidate:
        trial = self._study.ask(dict(self.genome.distributions))
        params: dict[str, float | str] = dict(trial.params)
        candidate = Candidate(
            number=trial.number,
            generation=trial.number // self.spec.budget.population,
            params=params,
            recipe=self.genome.recipe(params),
            parents=self.genome.parents(params),
        )
        self._running[trial.number] = trial
        self._trials.append(
            TrialRecord(
                number=candidate.number,
                generation=candidate.generation,
                asked_after=self._told,
                params=params,
                recipe=candidate.recipe,
                parents=list(candidate.parents),
            )
        )
        return candidate

    def tell(self, number: int, result: Scores | Failure) -> None:
        """The result of a running trial; trials may finish in any order.

        Scores must give every objective metric; a value that is not finite fails the trial.
        """
        trial = self._running.get(number)
        if trial is None:
            raise ValueError(f"trial {number} is not running: it was never proposed or was told")
        if isinstance(result, Scores):
            result = self._checked(result)
        del self._running[number]
        if isinstance(result, Scores):
            values = [result.values[o.metric] for o in self._objectives]
            for objective, value in zip(self._objectives, values, strict=True):
                if objective.threshold is not None:
                    trial.set_constraint(objective.metric, _violation(objective, value))
            with warnings.catch_warnings():
                # CMA-ES samples without constraints and says so on every result; they still
                # keep infeasible trials off Optuna's Pareto front.
                warnings.filterwarnings("ignore", "Constraints have been set, but CmaEsSampler")
                self._study.tell(trial, values)
            update = {"state": "succeeded", "values": dict(result.values)}
        else:
            self._study.tell(trial, state=TrialState.FAIL)
            update = {"state": "failed", "failure": result.reason[:4096]}
        self._trials[number] = self._trials[number].model_copy(
            update={
                **update,
                "told": self._told,
                "seconds": result.seconds,
                "gpu_seconds": result.gpu_seconds,
            }
        )
        self._told += 1
        if isinstance(result, Scores) and self._goal is None and self._reaches_goal(result):
            self._goal = number
        self._close_generations()

    def _checked(self, scores: Scores) -> Scores | Failure:
        wanted = {o.metric for o in self._objectives}
        if set(scores.values) != wanted:
            raise ValueError(
                f"scores must give exactly the objective metrics {sorted(wanted)},"
                f" got {sorted(scores.values)}"
            )
        for metric, value in scores.values.items():
            if not math.isfinite(value):
                return Failure(f"objective {metric} is {value}", scores.seconds, scores.gpu_seconds)
        return Scores(
            {m: float(v) for m, v in scores.values.items()}, scores.seconds, scores.gpu_seconds
        )

    # -- decisions --

    def decide(self, elapsed_seconds: float = 0.0) -> Decision:
        """Whether to stop, given the wall-clock seconds counted against the budget so far."""
        budget = self.spec.budget
        failed = self.trials_failed
        if budget.max_failed_trials is not None and failed > budget.max_failed_trials:
            last = next(t for t in reversed(self._by_told()) if t.state == "failed")
            return Decision(
                StopReason.TOO_MANY_FAILURES,
                f"{failed} trials failed, more than maxFailedTrials {budget.max_failed_trials};"
                f" the last, trial {last.number}: {last.failure}",
            )
        if self._goal is not None:
            values = self._trials[self._goal].values or {}
            reached = ", ".join(
                f"{o.metric} {values[o.metric]:g}" for o in self._objectives if o.goal is not None
            )
            return Decision(
                StopReason.GOAL_REACHED, f"trial {self._goal} reached every goal: {reached}"
            )
        patience = budget.patience
        recent = self._history[-patience:] if patience else []
        if patience and len(recent) == patience and not any(r.improved for r in recent):
            return Decision(
                StopReason.CONVERGED,
                f"no better front in the last {patience} generations"
                f" ({recent[0].generation} to {recent[-1].generation})",
            )
        limit = budget.max_duration_seconds
        if limit is not None and elapsed_seconds >= limit:
            return Decision(
                StopReason.DURATION_EXCEEDED,
                f"ran {elapsed_seconds:.0f} s of maxDurationSeconds {limit}",
            )
        if not self._running:
            if len(self._trials) >= budget.max_trials:
                return Decision(StopReason.BUDGET_SPENT, f"all {budget.max_trials} trials done")
            if self._gpu_spent():
                return Decision(
                    StopReason.BUDGET_SPENT,
                    f"{self.gpu_hours_used:.3g} of {budget.gpu_hours:g} GPU hours spent",
                )
        return Decision()

    def _gpu_spent(self) -> bool:
        limit = self.spec.budget.gpu_hours
        return limit is not None and self.gpu_hours_used >= limit

    def _reaches_goal(self, scores: Scores) -> bool:
        goals = [o for o in self._objectives if o.goal is not None]
        return (
            bool(goals)
            and self._feasible(scores.values)
            and all(_meets(o, scores.values[o.metric], o.goal) for o in goals)
        )

    # -- fitness, front, history --

    def _feasible(self, values: Mapping[str, float]) -> bool:
        return all(_meets(o, values[o.metric], o.threshold) for o in self._objectives)

    def _point(self, values: Mapping[str, float]) -> Point:
        return tuple(
            s * values[o.metric] for s, o in zip(self._signs, self._objectives, strict=True)
        )

    def fitness(self, values: Mapping[str, float]) -> float:
        """The scalar fitness: objective values by weight, minimized ones negated."""
        point = self._point(values)
        return sum(o.weight * v for o, v in zip(self._objectives, point, strict=True))

    def _trial_point(self, number: int) -> TrialPoint:
        record = self._trials[number]
        values = record.values or {}
        return TrialPoint(
            trial=number,
            generation=record.generation,
            objectives=dict(values),
            fitness=self.fitness(values),
            recipe=summary(record.recipe),
        )

    def front(self, limit: int = MAX_FRONT) -> list[TrialPoint]:
        """The Pareto front of the feasible scored trials, fittest first, at most ``limit``.

        The front is Optuna's ``best_trials``: with thresholds, the study is constrained and only
        feasible trials count. Trials that tie in every objective are one point of the front,
        the earliest of them: on saturated data many recipes score alike, and each point of the
        front is bred and evaluated as a Descendant.
        """
        points: dict[tuple[float, ...], TrialPoint] = {}
        for trial in sorted(self._study.best_trials, key=lambda t: t.number):
            point = self._trial_point(trial.number)
            points.setdefault(tuple(trial.values), point)
        front = sorted(points.values(), key=lambda p: (-p.fitness, p.trial))
        return front[:limit]

    def best(self) -> TrialPoint | None:
        """The fittest trial of the front."""
        front = self.front(limit=1)
        return front[0] if front else None

    def history(self, limit: int = MAX_HISTORY) -> list[GenerationRecord]:
        """Summaries of the latest ``limit`` completed generations, oldest first."""
        return self._history[-limit:]

    def _close_generations(self) -> None:
        """Summarise every generation whose trials are all told and no more will join."""
        population = self.spec.budget.population
        max_trials = self.spec.budget.max_trials
        while True:
            g = len(self._history)
            members = self._trials[g * population : (g + 1) * population]
            last = g * population + len(members) >= max_trials
            if not members or (len(members) < population and not last):
                return
            if any(t.state == "running" for t in members):
                return
            self._history.append(self._summarise(g, members))

    def _summarise(self, generation: int, members: Sequence[TrialRecord]) -> GenerationRecord:
        scored = [t.values for t in members if t.values is not None]
        feasible = [v for v in scored if self._feasible(v)]
        points = [self._point(v) for v in feasible]
        improved = any(not any(_covers(q, p) for q in self._front) for p in points)
        for p in points:
            if not any(_covers(q, p) for q in self._front):
                self._front = [q for q in self._front if not dominates(p, q)] + [p]
        fits = [self.fitness(v) for v in feasible]
        return GenerationRecord(
            generation=generation,
            trials=len(scored),
            failed=len(members) - len(scored),
            best_fitness=max(fits) if fits else None,
            mean_fitness=sum(fits) / len(fits) if fits else None,
            front_size=len(self._front),
            improved=improved,
        )

    # -- counts --

    @property
    def generation(self) -> int:
        """The generation of the latest trial handed out."""
        return self._trials[-1].generation if self._trials else 0

    @property
    def trials_done(self) -> int:
        """Trials that succeeded."""
        return sum(t.state == "succeeded" for t in self._trials)

    @property
    def trials_failed(self) -> int:
        """Trials that failed."""
        return sum(t.state == "failed" for t in self._trials)

    @property
    def trials_running(self) -> int:
        """Trials handed out and not told."""
        return len(self._running)

    @property
    def gpu_hours_used(self) -> float:
        """GPU hours the told trials spent."""
        return sum(t.gpu_seconds or 0.0 for t in self._trials) / 3600.0

    # -- the ledger --

    def _by_told(self) -> list[TrialRecord]:
        told = [t for t in self._trials if t.told is not None]
        return sorted(told, key=lambda t: t.told or 0)

    def ledger(self) -> Ledger:
        """Every trial so far, with the order of proposals and results."""
        return Ledger(
            strategy=self.spec.strategy,
            seed=self.spec.seed,
            num_layers=self._num_layers,
            trials=list(self._trials),
        )

    @classmethod
    def replay(cls, spec: BreedingRunSpec, ledger: Ledger) -> Search:
        """The search a ledger records, rebuilt under ``spec`` (whose budget may have grown).

        Proposals and results are replayed in their recorded order, so the sampler's state, its
        random generator included, is where it was and the next proposal is the one the
        uninterrupted run would have made. Trials still running stay running, to be told.
        Raises :class:`LedgerMismatch` when the sampler proposes other genes than recorded.
        """
        if (ledger.strategy, ledger.seed) != (spec.strategy, spec.seed):
            raise LedgerMismatch(
                f"the ledger was written by strategy {ledger.strategy} with seed {ledger.seed},"
                f" the spec names {spec.strategy} with seed {spec.seed}"
            )
        search = cls(spec, ledger.num_layers)
        told = sorted((t for t in ledger.trials if t.told is not None), key=lambda t: t.told or 0)
        if [t.told for t in told] != list(range(len(told))):
            raise LedgerMismatch("the ledger's results are not numbered 0, 1, 2, ... in order")
        results = iter(told)

        def tell_until(count: int) -> None:
            while search._told < count:
                record = next(results)
                search.tell(record.number, _result(record))

        for number, record in enumerate(ledger.trials):
            if record.number != number:
                raise LedgerMismatch(f"the ledger's trial {number} is numbered {record.number}")
            tell_until(record.asked_after)
            candidate = search._ask()
            if candidate.params != record.params:
                raise LedgerMismatch(
                    f"trial {number}: the sampler now proposes other genes than the ledger"
                    " records; it was written under another spec, seed or Optuna version"
                )
        tell_until(len(told))
        return search


def _violation(objective: Objective, value: float) -> float:
    """Optuna's constraint value: how far past the threshold (feasible at zero or less)."""
    assert objective.threshold is not None
    if objective.direction == "maximize":
        return objective.threshold - value
    return value - objective.threshold


def _result(record: TrialRecord) -> Scores | Failure:
    timings = (record.seconds or 0.0, record.gpu_seconds or 0.0)
    if record.state == "succeeded" and record.values is not None:
        return Scores(record.values, *timings)
    return Failure(record.failure or "failed", *timings)
