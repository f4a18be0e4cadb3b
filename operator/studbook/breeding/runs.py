"""A BreedingRun around its search: admission, trial tasks, and the descendants it makes.

Pure, shared by the controller and ``studbook breed``:

* :func:`admit_run` judges a run before any trial: its objectives must read the suite's
  ``optimize`` data, and a recipe of each searched method, its weights at the far end of
  ``weightRange``, must pass the policy's admission of a Descendant (operator allowed, merge
  weight within the mutation budget, parents signed and compatible, licences, restrictions);
* :func:`trial_task` is the task of a batch of trials (a trial Job, or the local trial process);
* :func:`descendant_of` is the Descendant a trial's recipe becomes once it is on the front,
  pinned to the parent artifacts the trial was scored against, its origin naming the run;
* :func:`run_id` names a run's search by what its trials are a function of (so a run resumes
  and continues, and a changed one starts afresh), :func:`layer_count` reads the parents' layer
  count from a model configuration, and :func:`run_status` is the run's status as its search
  stands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final, Literal

from studbook.api import reasons
from studbook.api.canonical import digest_of
from studbook.api.common import ParentRef
from studbook.api.descendant import Descendant, DescendantSpec, Origin
from studbook.api.ledger import TrialRecord
from studbook.api.operators import (
    SPARSIFYING_METHODS,
    UNWEIGHTED_METHODS,
    MergeConfig,
    OperatorSpec,
)
from studbook.api.policy import BreedingPolicySpec
from studbook.api.resource import ObjectMeta
from studbook.api.run import DEFAULT_WEIGHT_RANGE, BreedingRun, BreedingRunStatus, TrialPoint
from studbook.api.suite import EvaluationSuite, MetricName, SuiteDataset
from studbook.api.task import ParentArtifact, TrialSpec, TrialTask
from studbook.breeding.admission import Decision, ParentFacts, Refusal, admit
from studbook.breeding.conditions import set_condition
from studbook.breeding.search import Decision as SearchDecision
from studbook.breeding.search import Search

RUN_LABEL: Final = "breeding.studbook.dev/run"
"""Label on the Descendants and trial Jobs of a run: the run's name."""

_METRICS: Final = frozenset(MetricName.__args__)  # type: ignore[attr-defined]


def run_key(run: BreedingRun) -> str:
    """``namespace/name`` of a run."""
    return f"{run.metadata.namespace or 'default'}/{run.metadata.name}"


def _objective_refusals(run: BreedingRun, suite: EvaluationSuite) -> list[Refusal]:
    datasets = {d.name: d for d in suite.spec.datasets}
    optimize = sorted(n for n, d in datasets.items() if d.role == "optimize")
    out = []
    for i, objective in enumerate(run.spec.objectives):
        field = f"spec.objectives[{i}].metric"
        dataset, _, metric = objective.metric.rpartition("/")
        found = datasets.get(dataset)
        if found is None or found.role != "optimize":
            why = "no dataset of" if found is None else f"a {found.role} dataset of"
            out.append(
                Refusal(
                    reasons.INVALID_SPEC,
                    field,
                    f"{objective.metric}: {dataset or '(none)'} is {why} suite"
                    f" {suite.metadata.name}; a search reads only optimize data:"
                    f" {', '.join(optimize) or 'the suite has none'}",
                )
            )
        elif metric not in _METRICS or metric == "custom":
            out.append(
                Refusal(
                    reasons.INVALID_SPEC,
                    field,
                    f"{objective.metric}: {metric or '(none)'} is not a metric a trial measures;"
                    f" one of {', '.join(sorted(_METRICS - {'custom'}))}",
                )
            )
    return out


def probe_specs(run: BreedingRun) -> list[DescendantSpec]:
    """A recipe of each searched method, as a Descendant would carry it, for admission.

    Weights sit at the end of ``weightRange`` farthest from zero, so the policy's merge-weight
    budget judges the boldest recipe the search may propose.
    """
    spec = run.spec
    space = spec.search_space
    bounds = space.weight_range or DEFAULT_WEIGHT_RANGE
    boldest = max(bounds.min, bounds.max, key=abs)
    pool = [p.name for p in spec.parent_pool]
    probes = []
    for method in space.methods:
        weighted = [p for p in pool if p != spec.base]
        parents = weighted if method == "slerp" else pool
        config = MergeConfig.model_validate(
            {
                "method": method,
                "base": None if method == "slerp" else spec.base,
                "weights": []
                if method in UNWEIGHTED_METHODS
                else [{"parent": p, "weight": boldest} for p in weighted],
                "parameters": {
                    "density": 1.0 if method in SPARSIFYING_METHODS else None,
                    "t": 0.5 if method == "slerp" else None,
                },
                "dtype": spec.template.dtype,
            }
        )
        probes.append(_spec(run, parents, config, None, {}))
    return probes


def admit_run(
    run: BreedingRun,
    suite: EvaluationSuite,
    policy: BreedingPolicySpec,
    parents: Mapping[str, ParentFacts | None],
) -> Decision:
    """Whether a run may start: its objectives, and what the policy says of its recipes.

    Refusals are reported once each, whichever method's recipe raised them; parents not Ready
    yet or missing are waited for, as for a Descendant.
    """
    refusals = _objective_refusals(run, suite)
    pool = [p.name for p in run.spec.parent_pool]
    waiting: list[str] = []
    missing: list[str] = []
    for probe in probe_specs(run):
        decision = admit(probe, policy, parents)
        method = probe.operator.merge.method if probe.operator.merge else "?"
        for refusal in decision.refusals:
            field, message = refusal.field, refusal.message
            if field.startswith("spec.parents["):
                # a probe lists SLERP's two parents only: name the parent by its pool index
                index, _, rest = field.removeprefix("spec.parents[").partition("]")
                parent = probe.parents[int(index)].name
                field = f"spec.parentPool[{pool.index(parent)}]{rest}"
            elif field.startswith("spec.parents"):
                field = field.replace("spec.parents", "spec.parentPool", 1)
            elif field.startswith("spec.operator"):
                weights = field.startswith("spec.operator.merge.weights")
                field = "spec.searchSpace." + ("weightRange" if weights else "methods")
                message = f"recipes of {method}: {message}"
            elif field.startswith("spec."):
                field = field.replace("spec.", "spec.template.", 1)
            moved = Refusal(refusal.reason, field, message)
            if not any((r.reason, r.field) == (moved.reason, moved.field) for r in refusals):
                refusals.append(moved)
        waiting += [p for p in decision.waiting_for if p not in waiting]
        missing += [p for p in decision.missing if p not in missing]
    return Decision(tuple(refusals), tuple(waiting), tuple(missing))


def optimize_datasets(run: BreedingRun, suite: EvaluationSuite) -> list[SuiteDataset]:
    """The suite's datasets the run's objectives read, in suite order."""
    wanted = {o.metric.rpartition("/")[0] for o in run.spec.objectives}
    return [d for d in suite.spec.datasets if d.name in wanted and d.role == "optimize"]


def trial_task(
    run: BreedingRun,
    suite: EvaluationSuite,
    parents: Sequence[ParentArtifact],
    store: str,
    output: str,
    trials: Sequence[TrialSpec],
) -> TrialTask:
    """The task that merges and scores a batch of trials, the parents loaded once."""
    spec = run.spec
    return TrialTask(
        run=run_key(run),
        parents=list(parents),
        base=spec.base,
        compatibility=spec.template.compatibility,
        datasets=optimize_datasets(run, suite),
        objectives=[o.metric for o in spec.objectives],
        calibration_bins=suite.spec.calibration_bins,
        suite_seed=suite.spec.seed,
        store=store,
        output=output,
        trials=list(trials),
    )


def descendant_name(run: str, trial: int) -> str:
    """The name of the Descendant of a run's trial: ``<run>-t<trial>``, kept to 63 characters."""
    suffix = f"-t{trial}"
    if len(run) + len(suffix) <= 63:
        return run + suffix
    digest = hashlib.sha256(run.encode()).hexdigest()[:8]
    return f"{run[: 63 - len(suffix) - 9].rstrip('-')}-{digest}{suffix}"


def _spec(
    run: BreedingRun,
    parents: Sequence[str],
    recipe: MergeConfig,
    origin: Origin | None,
    pins: Mapping[str, str],
) -> DescendantSpec:
    spec = run.spec
    template = spec.template
    return DescendantSpec(
        parents=[ParentRef(name=p, artifact_id=pins.get(p)) for p in parents],
        operator=OperatorSpec(kind="merge", merge=recipe),
        compatibility=template.compatibility,
        license=template.license,
        risk_tier=template.risk_tier,
        niche=template.niche,
        resources=template.resources,
        policy_ref=spec.policy_ref,
        evaluation_suite_ref=spec.evaluation_suite_ref,
        origin=origin,
    )


def descendant_of(run: BreedingRun, record: TrialRecord, pins: Mapping[str, str]) -> Descendant:
    """The Descendant a trial's recipe becomes, its origin naming the run and the trial.

    Its parents are pinned to the artifacts ``pins`` names: those the trial was scored against.
    """
    origin = Origin(
        breeding_run=run.metadata.name, generation=record.generation, trial=record.number
    )
    return Descendant(
        metadata=ObjectMeta(
            name=descendant_name(run.metadata.name, record.number),
            namespace=run.metadata.namespace,
            labels={RUN_LABEL: run.metadata.name},
        ),
        spec=_spec(run, record.parents, record.recipe, origin, pins),
    )


def run_id(run: BreedingRun, parent_ids: Sequence[str], suite: EvaluationSuite) -> str:
    """The id of a run's search: a digest of what its trials are a function of.

    Its spec but the budget, the parents' artifact ids (in pool order) and the suite. An
    unchanged run has the same id, so its ledger resumes it, and raising ``maxTrials``
    continues it; another recipe space, seed, parent artifact or suite starts a new search.
    """
    spec = run.spec.to_wire()
    spec.pop("budget", None)
    key = digest_of({"spec": spec, "parents": list(parent_ids), "suite": suite.spec.to_wire()})
    return key.removeprefix("sha256:")[:32]


LAYER_KEYS: Final = ("num_hidden_layers", "n_layer", "num_layers")
"""The keys of a Hugging Face ``config.json`` that give the number of layers."""


def layer_count(config: Mapping[str, object]) -> int | None:
    """The number of layers a model's ``config.json`` names, or ``None`` where it names none."""
    for key in LAYER_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def run_status(
    search: Search,
    decision: SearchDecision,
    descendants: Mapping[int, str],
    ledger: str,
    elapsed_seconds: float,
    now: datetime,
) -> BreedingRunStatus:
    """A run's status as the search stands: counts, best, front, history, ledger and conditions.

    ``descendants`` names the Descendant made of each trial that has one (the front's, once
    created); ``decision`` is the latest stop decision (none yet: the run is Running).
    """

    def named(point: TrialPoint) -> TrialPoint:
        return point.model_copy(update={"descendant": descendants.get(point.trial)})

    front = [named(p) for p in search.front()]
    best = search.best()
    phase: Literal["Running", "Succeeded", "Failed"] = "Running"
    if decision.stop:
        phase = "Failed" if decision.failed else "Succeeded"
        conditions = set_condition(
            [], reasons.PROGRESSING, "False", str(decision.reason), decision.message, None, now
        )
        conditions = set_condition(
            conditions, reasons.COMPLETE, "True", str(decision.reason), decision.message, None, now
        )
    else:
        message = f"{search.trials_done + search.trials_failed} trials told"
        conditions = set_condition(
            [], reasons.PROGRESSING, "True", reasons.PROGRESSING, message, None, now
        )
    return BreedingRunStatus(
        phase=phase,
        message=decision.message or None,
        generation=search.generation,
        trials_done=search.trials_done,
        trials_failed=search.trials_failed,
        trials_running=search.trials_running,
        gpu_hours_used=search.gpu_hours_used,
        elapsed_seconds=elapsed_seconds,
        best=named(best) if best is not None else None,
        pareto_front=front,
        history=search.history(),
        ledger_uri=ledger,
        conditions=conditions,
    )
