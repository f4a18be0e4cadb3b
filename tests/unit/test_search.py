"""The BreedingRun search core with real Optuna: determinism, replay, stop reasons, the front,
recipes the admission accepts, and refusals."""

from __future__ import annotations

import fnmatch
import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import pytest
from tests.builders import Body, Parent

from studbook.api import ManifestError, reasons
from studbook.api.ledger import Ledger
from studbook.api.run import BreedingRunSpec
from studbook.breeding.admission import admit
from studbook.breeding.search import (
    Candidate,
    Failure,
    Genome,
    LedgerMismatch,
    Scores,
    Search,
    SearchSpecError,
    StopReason,
    dominates,
    index_globs,
)

SENTIMENT, TOPIC = "sentiment-optimize/accuracy", "topic-optimize/accuracy"


def _spec(changes: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> BreedingRunSpec:
    """The example run, on whole-model coefficients with a small budget, changed as asked."""
    body = Body.of("breeding-run")
    spec = body.manifest["spec"]
    spec["searchSpace"].update(layerGranularity="model", tensorKinds=[])
    del spec["searchSpace"]["blocks"]
    spec["budget"] = {"maxTrials": 24, "population": 6, "parallelism": 3}
    for objective in spec["objectives"]:
        del objective["goal"]
    for path, value in (changes or {}).items():
        body.set(path, value)
    for path in drop:
        *parents, last = path.split(".")
        node: Any = body.manifest
        for part in parents:
            node = node[part]
        del node[last]
    return body.run().spec


def _single(strategy: str, **changes: Any) -> BreedingRunSpec:
    """One objective (CMA-ES and TPE take one); CMA-ES also one method."""
    methods = ["ties"] if strategy == "cmaes" else ["linear", "ties", "dare_ties"]
    return _spec(
        {
            "spec.strategy": strategy,
            "spec.objectives": [{"metric": SENTIMENT, "threshold": 0.5}],
            "spec.searchSpace.methods": methods,
            **changes,
        },
        drop=("spec.nsga2",),
    )


def _values(candidate: Candidate) -> dict[str, float]:
    """A cheap objective with a trade-off: each specialist wants its own weight up, the
    other's down; TIES earns a little."""
    w = {x.parent: x.weight for x in candidate.recipe.weights}
    a, b = w["minilm-sentiment"], w["minilm-topic"]
    d = candidate.recipe.parameters.density or 0.5
    bonus = 0.02 if candidate.recipe.method == "ties" else 0.0
    return {
        SENTIMENT: 1 - (a - 1.1) ** 2 - 0.4 * b**2 - (d - 0.35) ** 2 + bonus,
        TOPIC: 1 - (b - 0.9) ** 2 - 0.4 * a**2 - (d - 0.6) ** 2 + bonus,
    }


def _scores(search: Search) -> Callable[[Candidate], Scores]:
    metrics = [o.metric for o in search.spec.objectives]
    return lambda c: Scores({m: v for m, v in _values(c).items() if m in metrics})


def _drive(search: Search, rounds: int | None = None) -> list[Candidate]:
    """Ask as much as parallelism allows, then tell every other running trial, newest first, so
    trials finish out of order and some run across several proposals."""
    score = _scores(search)
    asked: list[Candidate] = []
    running = _running(search)
    done = 0
    while not search.decide().stop and (rounds is None or done < rounds):
        new = search.ask(search.spec.budget.parallelism)
        asked += new
        running += new
        if not running:
            break
        for candidate in running[::-2]:
            search.tell(candidate.number, score(candidate))
            running.remove(candidate)
        done += 1
    return asked


def _running(search: Search) -> list[Candidate]:
    """The candidates of the trials a (replayed) search still has running, from its ledger."""
    return [
        Candidate(t.number, t.generation, t.params, t.recipe, tuple(t.parents))
        for t in search.ledger().trials
        if t.state == "running"
    ]


def _params(candidates: list[Candidate]) -> list[dict[str, float | str]]:
    return [dict(c.params) for c in candidates]


STRATEGIES: dict[str, Callable[[], BreedingRunSpec]] = {
    "nsga2": _spec,
    "random": lambda: _spec({"spec.strategy": "random"}, drop=("spec.nsga2",)),
    "tpe": lambda: _single("tpe"),
    "cmaes": lambda: _single("cmaes"),
}


# --- determinism and replay --------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_same_spec_and_seed_propose_the_same_candidates(strategy: str) -> None:
    spec = STRATEGIES[strategy]()
    first, second = _drive(Search(spec)), _drive(Search(spec))
    assert len(first) == spec.budget.max_trials
    assert _params(first) == _params(second)
    other = _drive(Search(spec.model_copy(update={"seed": spec.seed + 1})))
    assert _params(other) != _params(first)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_replay_from_the_ledger_continues_exactly(strategy: str) -> None:
    spec = STRATEGIES[strategy]()
    whole = Search(spec)
    before = _drive(whole, rounds=8)  # into the third generation, trials still running
    assert whole.trials_running > 0 and whole.generation >= 2
    ledger = Ledger.model_validate_json(whole.ledger().model_dump_json(by_alias=True))
    replayed = Search.replay(spec, ledger)
    assert replayed.ledger() == whole.ledger()
    assert replayed.history() == whole.history()
    after_whole, after_replayed = _drive(whole), _drive(replayed)
    assert len(before) + len(after_whole) == spec.budget.max_trials
    assert _params(after_replayed) == _params(after_whole)
    assert replayed.front() == whole.front()


def test_replay_refuses_a_ledger_the_spec_did_not_write() -> None:
    spec = _spec()
    search = Search(spec)
    _drive(search, rounds=2)
    ledger = search.ledger()
    with pytest.raises(LedgerMismatch, match="seed 42, the spec names nsga2 with seed 7"):
        Search.replay(spec.model_copy(update={"seed": 7}), ledger)
    first = ledger.trials[0]
    tampered = first.model_copy(update={"params": {**first.params, "method": "linear"}})
    if first.params["method"] == "linear":
        tampered = first.model_copy(update={"params": {**first.params, "method": "ties"}})
    forged = ledger.model_copy(update={"trials": [tampered, *ledger.trials[1:]]})
    with pytest.raises(LedgerMismatch, match="trial 0: the sampler now proposes other genes"):
        Search.replay(spec, forged)


def test_raising_max_trials_continues_a_finished_run() -> None:
    finished = Search(_spec())
    _drive(finished)
    assert finished.decide().reason is StopReason.BUDGET_SPENT
    assert finished.ask(3) == []
    resumed = Search.replay(_spec({"spec.budget.maxTrials": 36}), finished.ledger())
    assert resumed.ledger() == finished.ledger()
    assert not resumed.decide().stop
    more = _drive(resumed)
    assert [c.number for c in more] == list(range(24, 36))
    assert {c.generation for c in more} == {4, 5}
    # NSGA-II goes on breeding from the trials so far instead of starting afresh.
    fresh = Search(_spec({"spec.budget.maxTrials": 36})).ask(3)
    assert _params(more[:3]) != _params(fresh)
    assert resumed.decide().reason is StopReason.BUDGET_SPENT


# --- asking and telling ------------------------------------------------------------------------


def test_ask_respects_parallelism_and_the_trial_budget() -> None:
    search = Search(_spec({"spec.budget.maxTrials": 7}))
    first = search.ask(10)
    assert [c.number for c in first] == [0, 1, 2]
    assert search.ask(10) == []
    search.tell(1, Scores(_values(first[1])))
    assert [c.number for c in search.ask(10)] == [3]
    assert search.trials_running == 3 and search.trials_done == 1


def test_results_are_checked() -> None:
    search = Search(_spec())
    [candidate, *_] = search.ask(3)
    with pytest.raises(ValueError, match="exactly the objective metrics"):
        search.tell(0, Scores({SENTIMENT: 0.9}))
    with pytest.raises(ValueError, match="trial 9 is not running"):
        search.tell(9, Scores(_values(candidate)))
    search.tell(0, Scores({SENTIMENT: math.nan, TOPIC: 0.8}))
    assert search.ledger().trials[0].failure == f"objective {SENTIMENT} is nan"
    assert search.trials_failed == 1
    with pytest.raises(ValueError, match="trial 0 is not running"):
        search.tell(0, Failure("twice"))


# --- stop reasons ------------------------------------------------------------------------------


def test_budget_spent_by_trials() -> None:
    search = Search(_spec())
    _drive(search)
    decision = search.decide()
    assert (decision.reason, decision.message) == (StopReason.BUDGET_SPENT, "all 24 trials done")
    assert search.trials_done == 24 and not decision.failed
    assert decision.reason == reasons.BUDGET_SPENT


def test_budget_spent_by_gpu_hours_lets_running_trials_finish() -> None:
    search = Search(_spec({"spec.budget.gpuHours": 0.01}))  # 36 GPU seconds
    running = search.ask(3)
    for candidate in running[:2]:
        search.tell(candidate.number, Scores(_values(candidate), gpu_seconds=20.0))
    assert search.ask(3) == [] and not search.decide().stop
    search.tell(running[2].number, Failure("evicted", gpu_seconds=5.0))
    decision = search.decide()
    assert decision.reason is StopReason.BUDGET_SPENT
    assert decision.message == "0.0125 of 0.01 GPU hours spent"


def test_converged_after_patience_generations_without_a_better_front() -> None:
    search = Search(_spec({"spec.budget.patience": 2, "spec.budget.maxTrials": 60}))
    while not search.decide().stop:
        for candidate in search.ask(3):
            search.tell(candidate.number, Scores({SENTIMENT: 0.9, TOPIC: 0.8}))
    decision = search.decide()
    assert decision.reason is StopReason.CONVERGED
    assert decision.message == "no better front in the last 2 generations (1 to 2)"
    assert [r.improved for r in search.history()] == [True, False, False]
    assert search.ask(3) == []


def test_goal_reached_by_a_feasible_trial() -> None:
    spec = _spec({"spec.objectives.0.goal": 0.8, "spec.objectives.1.goal": 0.75})
    search = Search(spec)
    search.ask(3)
    search.tell(0, Scores({SENTIMENT: 0.99, TOPIC: 0.6}))  # topic under its threshold
    search.tell(1, Scores({SENTIMENT: 0.85, TOPIC: 0.74}))  # topic short of its goal
    assert not search.decide().stop
    search.tell(2, Scores({SENTIMENT: 0.81, TOPIC: 0.76}))
    decision = search.decide()
    assert decision.reason is StopReason.GOAL_REACHED
    assert decision.message == f"trial 2 reached every goal: {SENTIMENT} 0.81, {TOPIC} 0.76"


def test_too_many_failures_fail_the_run() -> None:
    search = Search(_spec({"spec.budget.maxFailedTrials": 2}))
    first, second, third = search.ask(3)
    search.tell(second.number, Failure("out of memory"))
    search.tell(first.number, Scores(_values(first)))
    search.tell(third.number, Failure("out of memory"))
    assert search.decide().stop is False
    [candidate] = search.ask(1)
    search.tell(candidate.number, Failure("out of memory again"))
    decision = search.decide()
    assert decision.reason is StopReason.TOO_MANY_FAILURES and decision.failed
    assert decision.message == (
        "3 trials failed, more than maxFailedTrials 2; the last, trial 3: out of memory again"
    )


def test_duration_exceeded() -> None:
    search = Search(_spec({"spec.budget.maxDurationSeconds": 600}))
    assert not search.decide(elapsed_seconds=599).stop
    decision = search.decide(elapsed_seconds=600)
    assert decision.reason is StopReason.DURATION_EXCEEDED
    assert decision.message == "ran 600 s of maxDurationSeconds 600"


# --- the Pareto front, fitness and history -----------------------------------------------------


def test_front_is_the_non_dominated_feasible_trials() -> None:
    spec = _spec(
        {
            "spec.strategy": "random",
            "spec.budget.maxTrials": 60,
            "spec.budget.population": 10,
            "spec.objectives.0.threshold": 0.3,
            "spec.objectives.1.threshold": 0.3,
        },
        drop=("spec.nsga2",),
    )
    search = Search(spec)
    _drive(search)
    trials = search.ledger().trials
    feasible = {
        t.number: (t.values[SENTIMENT], t.values[TOPIC])
        for t in trials
        if t.values is not None and t.values[SENTIMENT] >= 0.3 and t.values[TOPIC] >= 0.3
    }
    assert 3 < len(feasible) < len(trials)  # the thresholds cut, and leave a front to find
    expected = {
        n for n, p in feasible.items() if not any(dominates(q, p) for q in feasible.values())
    }
    front = search.front(limit=100)
    assert {p.trial for p in front} == expected
    fitness = {n: p[0] + p[1] for n, p in feasible.items()}
    assert [p.fitness for p in front] == sorted((fitness[n] for n in expected), reverse=True)
    best = search.best()
    assert best is not None and best.fitness == max(fitness.values())
    assert best.recipe.startswith(trials[best.trial].recipe.method + ": minilm-sentiment=")
    history = search.history()
    assert [r.generation for r in history] == list(range(6))
    assert history[-1].front_size == len(expected)
    assert sum(r.trials + r.failed for r in history) == 60
    assert max(r.best_fitness or -math.inf for r in history) == best.fitness


def test_trials_that_tie_are_one_point_of_the_front_the_earliest() -> None:
    spec = _spec(
        {"spec.strategy": "random", "spec.budget.maxTrials": 6, "spec.budget.population": 3},
        drop=("spec.nsga2",),
    )
    search = Search(spec)
    scores = [(1.0, 0.5), (1.0, 1.0), (0.5, 1.0), (1.0, 1.0), (1.0, 1.0), (0.2, 0.2)]
    for values in scores:
        (candidate,) = search.ask(1)
        search.tell(candidate.number, Scores(dict(zip((SENTIMENT, TOPIC), values, strict=True))))
    assert [p.trial for p in search.front()] == [1]
    assert [r.front_size for r in search.history()] == [1, 1]
    assert [r.improved for r in search.history()] == [True, False]


def test_fitness_negates_minimized_objectives() -> None:
    spec = _spec(
        {
            "spec.objectives": [
                {"metric": SENTIMENT, "weight": 2.0},
                {"metric": "sentiment-optimize/latency_ms", "direction": "minimize", "weight": 0.5},
            ]
        }
    )
    fitness = Search(spec).fitness({SENTIMENT: 0.9, "sentiment-optimize/latency_ms": 3.0})
    assert fitness == pytest.approx(2.0 * 0.9 - 0.5 * 3.0)


def test_the_front_and_history_in_the_status_are_bounded() -> None:
    spec = _spec(
        {"spec.strategy": "random", "spec.budget.maxTrials": 200, "spec.budget.parallelism": 10},
        drop=("spec.nsga2",),
    )
    search = Search(spec)
    while not search.decide().stop:
        for c in search.ask(10):  # two objectives opposed along one line: every trial optimal
            search.tell(
                c.number, Scores({SENTIMENT: 0.7 + c.number / 1000, TOPIC: 0.9 - c.number / 1000})
            )
    assert len(search.front()) == 32
    assert len(search.front(limit=1000)) == 200
    # The last generation is partial (200 = 33 * 6 + 2) and closes once no trial can join it.
    assert [(r.generation, r.trials) for r in search.history(limit=3)] == [
        (31, 6),
        (32, 6),
        (33, 2),
    ]


# --- genomes and recipes -----------------------------------------------------------------------

BERT_LAYERS, LLAMA_LAYERS = 6, 32
GRANULARITIES: list[tuple[str, dict[str, Any], int]] = [
    ("model", {"layerGranularity": "model"}, BERT_LAYERS),
    ("model-kinds", {"layerGranularity": "model", "tensorKinds": ["attention", "mlp"]}, 6),
    ("block", {"layerGranularity": "block", "blocks": 4}, BERT_LAYERS),
    (
        "block-kinds",
        {"layerGranularity": "block", "blocks": 3, "tensorKinds": ["attention", "mlp"]},
        6,
    ),
    ("layer", {"layerGranularity": "layer"}, BERT_LAYERS),
    ("layer-kinds", {"layerGranularity": "layer", "tensorKinds": ["mlp", "attention"]}, 6),
]
METHOD_SPACES: dict[str, dict[str, Any]] = {
    "linear": {"methods": ["linear"]},
    "task_arithmetic": {"methods": ["task_arithmetic"]},
    "ties": {"methods": ["ties"], "densityRange": {"min": 0.2, "max": 0.9}},
    "dare_linear": {"methods": ["dare_linear"]},
    "dare_ties": {"methods": ["dare_ties"]},
    "breadcrumbs": {"methods": ["breadcrumbs"], "densityRange": {"min": 0.1, "max": 0.99}},
    "breadcrumbs_ties": {"methods": ["breadcrumbs_ties"], "densityRange": {"min": 0.1, "max": 0.9}},
    "slerp": {"methods": ["slerp"], "tRange": {"min": 0.2, "max": 0.8}},
    "model_stock": {"methods": ["model_stock", "linear"]},
}


def _space_spec(
    space: dict[str, Any], architecture: str = "BertForSequenceClassification"
) -> BreedingRunSpec:
    weighted = set(space["methods"]) - {"slerp", "model_stock"}
    full = {"weightRange": {"min": 0.0, "max": 1.5}} if weighted else {}
    return _spec(
        {
            "spec.searchSpace": {**full, **space},
            "spec.template.compatibility.architecture": architecture,
        }
    )


def _genes(genome: Genome, method: str) -> dict[str, float | str]:
    """Genes spread over each range, the method chosen."""
    params: dict[str, float | str] = {}
    for i, (name, distribution) in enumerate(genome.distributions.items()):
        low, high = getattr(distribution, "low", 0.0), getattr(distribution, "high", 0.0)
        params[name] = method if name == "method" else low + (high - low) * (i % 7) / 6
    return params


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=lambda g: g[0])
@pytest.mark.parametrize("method", sorted(METHOD_SPACES))
def test_every_recipe_is_a_descendant_the_admission_accepts(
    method: str, granularity: tuple[str, dict[str, Any], int]
) -> None:
    _, layers, num_layers = granularity
    spec = _space_spec({**METHOD_SPACES[method], **layers})
    genome = Genome(spec, num_layers)
    genes = _genes(genome, method)
    recipe, parents = genome.recipe(genes), genome.parents(genes)
    assert recipe.method == method
    assert len(parents) == (2 if method == "slerp" else 3)
    descendant = (
        Body.of("ties-merge")
        .set("spec.parents", [{"name": p} for p in parents])
        .set("spec.operator.merge", recipe.to_wire())
        .descendant()
    )
    policy = Body.of("policy").policy()
    decision = admit(descendant.spec, policy.spec, {p: Parent(p).build() for p in parents})
    assert decision.admitted, decision.refusals
    overrides = len(recipe.overrides)
    scopes = len(genome.scopes) - 1
    if method == "model_stock":
        assert (recipe.weights, overrides) == ([], 0)
    else:
        # BERT's feed-forward block is two tensor groups (intermediate, output): two globs.
        assert overrides >= scopes


def test_recipe_globs_select_what_the_merge_engine_sees() -> None:
    """The merge engine's own matcher and layer index agree with each coefficient group."""
    plan = pytest.importorskip("studbook_trainer.merge.plan")
    cases = [
        ("BertForSequenceClassification", BERT_LAYERS, {"layerGranularity": "block", "blocks": 4}),
        ("LlamaForCausalLM", LLAMA_LAYERS, {"layerGranularity": "block", "blocks": 5}),
        ("LlamaForCausalLM", 12, {"layerGranularity": "layer"}),
    ]
    for architecture, num_layers, layers in cases:
        for kinds in ([], ["attention", "mlp"]):
            space = {"methods": ["ties"], **layers, "tensorKinds": kinds}
            genome = Genome(_space_spec(space, architecture), num_layers)
            for name, index, kind in _tensor_names(architecture, num_layers):
                scope = next(
                    (s for s in genome.scopes[1:] if any(plan.matches(g, name) for g in s.tensors)),
                    None,
                )
                if index is None or (kinds and kind is None):
                    assert scope is None, (name, scope)
                    continue
                assert scope is not None, name
                assert plan.layer_index(name) == index
                group, _, scope_kind = scope.name.partition(".")
                assert scope_kind == (kind if kinds else "")
                first, last = _span(group, num_layers, layers.get("blocks"))
                assert first <= index <= last, (name, scope.name)


def _tensor_names(architecture: str, layers: int) -> list[tuple[str, int | None, str | None]]:
    if architecture.startswith("Bert"):
        per_layer = {
            "attention.self.query.weight": "attention",
            "attention.output.dense.weight": "attention",
            "attention.output.LayerNorm.bias": "attention",
            "intermediate.dense.weight": "mlp",
            "output.dense.weight": "mlp",
            "output.LayerNorm.weight": "mlp",
        }
        prefix, outside = (
            "bert.encoder.layer",
            ["bert.embeddings.word_embeddings.weight", "classifier.weight"],
        )
    else:
        per_layer = {
            "self_attn.q_proj.weight": "attention",
            "self_attn.o_proj.weight": "attention",
            "mlp.gate_proj.weight": "mlp",
            "mlp.down_proj.weight": "mlp",
            "input_layernorm.weight": None,
        }
        prefix, outside = "model.layers", ["model.embed_tokens.weight", "lm_head.weight"]
    names: list[tuple[str, int | None, str | None]] = [(n, None, None) for n in outside]
    for i in range(layers):
        names += [(f"{prefix}.{i}.{rest}", i, kind) for rest, kind in per_layer.items()]
    return names


def _span(group: str, layers: int, blocks: int | None) -> tuple[int, int]:
    if group.startswith("layer"):
        i = int(group.removeprefix("layer"))
        return i, i
    b = int(group.removeprefix("block"))
    assert blocks is not None
    return b * layers // blocks, (b + 1) * layers // blocks - 1


@pytest.mark.parametrize("first", [0, 3, 8, 9, 10, 17, 95])
def test_index_globs_match_exactly_their_range(first: int) -> None:
    for last in range(first, first + 40):
        globs = index_globs(first, last)
        matched = {n for n in range(200) if any(fnmatch.fnmatchcase(str(n), g) for g in globs)}
        assert matched == set(range(first, last + 1)), (first, last, globs)


def test_the_genome_is_one_fixed_search_space() -> None:
    space = {"methods": ["linear", "ties", "slerp"], "layerGranularity": "block", "blocks": 2}
    genome = Genome(_space_spec(space), BERT_LAYERS)
    # Every method's genes in every group, whichever method a trial picks; the base takes none.
    assert list(genome.distributions) == [
        "method",
        *(
            f"{scope}/{gene}"
            for scope in ("model", "block0", "block1")
            for gene in ("weight/minilm-sentiment", "weight/minilm-topic", "density", "t")
        ),
    ]
    assert [s.tensors for s in genome.scopes] == [(), ("*.layer.[0-2].*",), ("*.layer.[3-5].*",)]
    slerp = genome.recipe({**_genes(genome, "slerp"), "method": "slerp"})
    assert (slerp.base, slerp.weights, slerp.parameters.density) == (None, [], None)
    assert slerp.parameters.t is not None and all(o.weights is None for o in slerp.overrides)


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "architecture", "num_layers", "words"),
    [
        (
            {"layerGranularity": "block", "blocks": 2},
            "T5ForConditionalGeneration",
            6,
            "T5ForConditionalGeneration names its layer tensors in a way Studbook does not know",
        ),
        (
            {"tensorKinds": ["mlp"]},
            "MambaForCausalLM",
            None,
            "use layerGranularity model without tensorKinds",
        ),
        ({"layerGranularity": "layer"}, "LlamaForCausalLM", None, "needs the parents' layer count"),
        (
            {"layerGranularity": "block", "blocks": 8},
            "BertModel",
            6,
            "searchSpace.blocks 8 exceeds the parents' 6 layers",
        ),
        (
            {"layerGranularity": "layer", "tensorKinds": ["attention", "mlp"]},
            "BertForSequenceClassification",
            24,
            "needs 72 overrides per recipe, more than the 64 a merge config holds",
        ),
    ],
)
def test_search_spaces_the_engine_cannot_merge_are_refused(
    space: dict[str, Any], architecture: str, num_layers: int | None, words: str
) -> None:
    spec = _space_spec({"methods": ["ties"], **space}, architecture)
    with pytest.raises(SearchSpecError, match=words):
        Search(spec, num_layers)


def test_cmaes_needs_two_numbers() -> None:
    spec = _single("cmaes", **{"spec.searchSpace": {"methods": ["slerp"]}})
    with pytest.raises(SearchSpecError, match="cmaes needs two or more searched numbers"):
        Search(spec)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        (
            {"spec.strategy": "cmaes"},
            "strategies cmaes and tpe optimise one objective",
        ),
        (
            {
                "spec.searchSpace.methods": ["slerp", "linear"],
                "spec.searchSpace.densityRange": None,
                "spec.parentPool": [{"name": n} for n in ("minilm-base", "a", "b", "c")],
            },
            "slerp merges exactly two parents: parentPool must hold two besides base",
        ),
        (
            {
                "spec.searchSpace.methods": ["breadcrumbs"],
                "spec.searchSpace.densityRange": {"min": 0.1, "max": 1.0},
            },
            "with breadcrumbs methods, set densityRange with max at most 0.99",
        ),
        ({"spec.searchSpace.methods": ["model_stock"]}, "model_stock has no coefficients"),
        ({"spec.searchSpace.tRange": {"min": 0, "max": 1}}, "tRange is read by slerp only"),
        (
            {"spec.searchSpace.weightRange": {"min": -11.0, "max": 1.0}},
            "weightRange must lie within",
        ),
        ({"spec.objectives.1.metric": SENTIMENT}, "objectives must not list a metric twice"),
    ],
)
def test_specs_nothing_can_run_are_refused_with_the_reason(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ManifestError, match=words):
        _spec(changes)


# --- quality -----------------------------------------------------------------------------------


def test_tpe_beats_random_search_on_average() -> None:
    """TPE's best of 40 trials beats random search's, averaged over five seeds.

    Seeded, so the outcome is fixed; the margin is robust: 0.024 to 0.044 over six groups of
    five seeds. NSGA-II's edge over random search (front hypervolume at 64 trials) was within
    the spread between seeds on this function, so it is not claimed.
    """

    def best(strategy: str, seed: int) -> float:
        spec = _single(
            strategy, **{"spec.seed": seed, "spec.budget": {"maxTrials": 40, "population": 8}}
        )
        search = Search(spec)
        _drive(search)
        point = search.best()
        assert point is not None
        return point.fitness

    tpe = statistics.mean(best("tpe", seed) for seed in range(5))
    random = statistics.mean(best("random", seed) for seed in range(5))
    assert tpe > random + 0.02, (tpe, random)


def test_ledger_is_plain_json() -> None:
    search = Search(_spec())
    _drive(search, rounds=2)
    wire = json.loads(search.ledger().model_dump_json(by_alias=True))
    trial = wire["trials"][0]
    assert set(trial) >= {
        "number",
        "generation",
        "askedAfter",
        "params",
        "recipe",
        "parents",
        "state",
    }
    assert wire["strategy"] == "nsga2" and wire["seed"] == 42
