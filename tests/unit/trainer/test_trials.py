"""A BreedingRun's trials merged and scored in memory, the parents loaded once.

The parents are the evaluation fixtures' MiniLM classifiers (a base with a seeded four-class head
and two specialists with trained heads), imported and sealed into a store as every package is.
The fixtures' specialists differ from their base in the head only; the topic specialist's encoder
is moved a little (seeded noise) so that every tensor has a task vector to trim, drop and elect
signs on.
A trial's numbers are checked against the normal path: the same recipe bred by the merge step,
sealed, and scored by the evaluate step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.unit.evaluation import _fixtures as fx
from tests.unit.evaluation.conftest import Data, Models, data, models  # noqa: F401

from studbook.api.common import Compatibility
from studbook.api.operators import MergeConfig, OperatorSpec
from studbook.api.run import BreedingRunSpec
from studbook.api.suite import EvaluationSuiteSpec, SuiteDataset
from studbook.api.task import (
    TRIALS_FILE,
    BreedTask,
    EvaluateTask,
    ParentArtifact,
    TrialResult,
    TrialSpec,
    TrialTask,
)
from studbook.artifacts import Store
from studbook.breeding.search import Search
from studbook.local.steps import seal_output
from studbook_trainer.__main__ import main
from studbook_trainer.evaluation import bytes_digest
from studbook_trainer.evaluation.harness import Options
from studbook_trainer.steps import breed, evaluate_step
from studbook_trainer.trials import TrialRunner, run_trials

from ._models import lm_rows, tiny_gpt2, write_jsonl

COMPAT = Compatibility(
    base_family="minilm-l6",
    architecture="BertForSequenceClassification",
    tokenizer_id="bert-base-uncased-wordpiece-30522",
)
OBJECTIVES = [
    "sentiment-optimize/accuracy",
    "sentiment-optimize/ece",
    "topic-optimize/accuracy",
    "topic-optimize/macro_f1",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Sealed:
    store: Path
    parents: list[ParentArtifact]
    datasets: list[SuiteDataset]


def _dataset(name: str, path: Path, task: str = "classification") -> SuiteDataset:
    return SuiteDataset(
        name=name,
        uri=path.as_uri(),
        digest=bytes_digest(path.read_bytes()),
        role="optimize",
        task=task,  # type: ignore[arg-type]
    )


def _moved(source: Path, out: Path, seed: int) -> Path:
    """``source`` with every floating tensor moved by seeded noise of 1% of its spread."""
    import shutil

    import torch
    from safetensors.torch import save_file

    state = fx.load_state(source)
    g = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if t.is_floating_point() and t.numel() > 1:
            state[name] = t + torch.randn(t.shape, generator=g) * (0.01 * float(t.std()))
    out.mkdir()
    for f in source.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, models: Models, data: Data) -> Sealed:  # noqa: F811
    root = tmp_path_factory.mktemp("trials")
    store = root / "store"
    parents = [
        fx.sealed_founder(store, models.base, "base", COMPAT),
        fx.sealed_founder(store, models.sentiment, "sentiment", COMPAT),
        fx.sealed_founder(store, _moved(models.topic, root / "topic", 7), "topic", COMPAT),
    ]
    topic = fx.write_jsonl(root / "t-opt.jsonl", fx.examples("topic", 32, seed=11))
    datasets = [
        _dataset("sentiment-optimize", data.files["sentiment-optimize"]),
        _dataset("topic-optimize", topic),
    ]
    return Sealed(store, parents, datasets)


def _task(sealed: Sealed, output: Path, trials: list[TrialSpec], **extra: Any) -> TrialTask:
    return TrialTask(
        run="ml/search",
        parents=sealed.parents,
        base="base",
        compatibility=COMPAT,
        datasets=sealed.datasets,
        objectives=OBJECTIVES,
        store=str(sealed.store),
        output=str(output),
        trials=trials,
        **extra,
    )


def _recipe(**fields: Any) -> MergeConfig:
    return MergeConfig.model_validate(fields)


TIES_BY_BLOCK = _recipe(
    method="ties",
    base="base",
    weights=[{"parent": "sentiment", "weight": 0.9}, {"parent": "topic", "weight": 0.7}],
    parameters={"density": 0.6},
    overrides=[
        {
            "tensors": "*.layer.[0-2].attention.*",
            "weights": [
                {"parent": "sentiment", "weight": 0.4},
                {"parent": "topic", "weight": 1.2},
            ],
            "parameters": {"density": 0.3},
        }
    ],
    dtype="float32",
)
DARE_BF16 = _recipe(
    method="dare_ties",
    base="base",
    weights=[{"parent": "sentiment", "weight": 1.0}, {"parent": "topic", "weight": 0.8}],
    parameters={"density": 0.5},
    dtype="bfloat16",
    seed=3,
)
SLERP = _recipe(method="slerp", parameters={"t": 0.4}, dtype="float32")
RECIPES = {
    "ties-by-block": (TIES_BY_BLOCK, []),
    "dare-bf16": (DARE_BF16, []),
    "slerp": (SLERP, ["sentiment", "topic"]),
}
REFUSED = _recipe(
    method="breadcrumbs",
    base="base",
    parameters={"density": 0.995, "gamma": 0.01},
    dtype="float32",
)


@pytest.fixture(scope="module")
def runner(sealed: Sealed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrialRunner]:
    scratch = tmp_path_factory.mktemp("runner")
    yield TrialRunner(_task(sealed, scratch / "out", []), scratch, Options(device="cpu"))


def _bred_and_evaluated(
    sealed: Sealed,
    recipe: MergeConfig,
    parents: list[str],
    tmp: Path,
    objectives: list[str] = OBJECTIVES,
    compatibility: Compatibility = COMPAT,
) -> dict[str, float]:
    """The normal path: the merge step breeds the recipe, it is sealed, the evaluate step scores
    it on a suite of the same optimize datasets."""
    by_name = {p.name: p for p in sealed.parents}
    listed = [by_name[n] for n in parents] if parents else sealed.parents
    task = BreedTask(
        descendant="ml/trial",
        operator=OperatorSpec(kind="merge", merge=recipe),
        parents=listed,
        compatibility=compatibility,
        store=str(sealed.store),
        output=str(tmp / "breed"),
    )
    breed(task)
    child = seal_output(Store.open(sealed.store), task, task.output, None)
    suite = EvaluationSuiteSpec.model_validate(
        {
            "version": "1.0.0",
            "datasets": [d.to_wire() for d in sealed.datasets],
            "metrics": [
                {"name": m, "dataset": d, "direction": "maximize"}
                for d, _, m in (o.partition("/") for o in objectives)
            ],
            "bootstrap": {"samples": 10},
            "compareEnsemble": False,
        }
    )
    card = evaluate_step(
        EvaluateTask(
            descendant="ml/trial",
            subject=ParentArtifact(
                name="trial", artifact_id=child.artifact.id, uri=child.artifact.uri
            ),
            suite_name="optimize",
            suite_digest="sha256:" + "0" * 64,
            suite=suite,
            store=str(sealed.store),
            output=str(tmp / "evaluate"),
        ),
        Options(device="cpu", measure_latency=False),
    )
    return {m.key: m.value for m in card.metrics}


# --- reading files: an audit hook sees every file the process opens --------------------------

_opened: list[tuple[str, bool]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], str | bytes | Path):
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
            (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        _opened.append((os.fsdecode(path), writes))


sys.addaudithook(_audit)


@contextmanager
def opened() -> Iterator[list[tuple[str, bool]]]:
    """Every file opened in the block: its path, and whether it was opened for writing."""
    global _opened
    _opened = found = []
    try:
        yield found
    finally:
        _opened = None


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_trial_scores_what_the_merge_and_evaluate_steps_score(
    name: str, sealed: Sealed, runner: TrialRunner, tmp_path: Path
) -> None:
    recipe, parents = RECIPES[name]
    result = runner.run(TrialSpec(number=0, merge=recipe, parents=parents))
    assert result.error is None and result.metrics is not None, result.error
    assert set(result.metrics) == set(OBJECTIVES)
    expected = _bred_and_evaluated(sealed, recipe, parents, tmp_path)
    assert result.metrics == pytest.approx({k: expected[k] for k in OBJECTIVES}, abs=1e-6)
    # the same recipe scores the same (DARE's masks come from the recipe's seed)
    again = runner.run(TrialSpec(number=1, merge=recipe, parents=parents))
    assert again.metrics == result.metrics
    assert result.merge_seconds > 0 and result.score_seconds > 0


def test_a_batch_reads_each_parent_once_and_writes_nothing_but_its_results(
    sealed: Sealed, tmp_path: Path
) -> None:
    trials = [
        TrialSpec(number=n, merge=recipe, parents=parents)
        for n, (recipe, parents) in enumerate([*RECIPES.values(), *RECIPES.values()])
    ]
    task = _task(sealed, tmp_path / "out", trials)
    packages = {p.name: Path(p.uri) for p in sealed.parents}
    with opened() as loading:
        runner = TrialRunner(task, tmp_path / "scratch", Options(device="cpu"))
    with opened() as trying:
        results = [runner.run(t) for t in trials]
    assert all(r.metrics is not None for r in results), [r.error for r in results]

    def weights(files: list[tuple[str, bool]], under: Path) -> list[str]:
        return [
            p
            for p, writes in files
            if p.endswith(".safetensors") and not writes and Path(p).is_relative_to(under)
        ]

    # Loading reads each sealed package once (the verified copy), and the loader reads that
    # copy's weights once: the model is built from the configuration, not from a checkpoint.
    for name, package in packages.items():
        assert len(weights(loading, package)) == 1, (name, loading)
        copy = tmp_path / "scratch" / "inputs" / name
        hashed_and_loaded = weights(loading, copy)
        assert len(hashed_and_loaded) == 2, (name, hashed_and_loaded)
    # Six trials open no file of any model, and write nothing at all.
    assert not [p for p, _ in trying if p.endswith(".safetensors")]
    assert not [p for p, writes in trying if writes]


def test_a_killed_batch_keeps_its_results_and_the_retry_runs_only_the_rest(
    sealed: Sealed, tmp_path: Path
) -> None:
    recipes = [TIES_BY_BLOCK, REFUSED, DARE_BF16, TIES_BY_BLOCK, DARE_BF16, TIES_BY_BLOCK]
    trials = [TrialSpec(number=10 + n, merge=r) for n, r in enumerate(recipes)]
    task = _task(sealed, tmp_path / "out", trials)
    task_file = tmp_path / "task.json"
    task_file.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
    results_file = tmp_path / "out" / TRIALS_FILE
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "studbook_trainer", "trials", "--task", str(task_file)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=ENV,
        )
        try:
            deadline = time.monotonic() + 300
            # results appear one by one as trials finish: kill the batch after the third
            while not results_file.exists() or results_file.read_bytes().count(b"\n") < 3:
                assert proc.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
    before = results_file.read_bytes()
    kept = [TrialResult.model_validate_json(line) for line in before.splitlines()]
    assert 3 <= len(kept) < len(trials), "the batch was killed before it finished"
    assert [r.number for r in kept] == [t.number for t in trials[: len(kept)]]
    refused = kept[1]
    assert refused.metrics is None and refused.error is not None
    assert "density + gamma must not exceed 1" in refused.error and "\n" not in refused.error
    assert kept[2].metrics is not None, "the trial after a refused one runs"

    results = run_trials(task, Options(device="cpu"))
    after = results_file.read_bytes()
    assert after.startswith(before), "the results already written are kept as they are"
    lines = [TrialResult.model_validate_json(line) for line in after.splitlines()]
    assert sorted(r.number for r in lines) == [t.number for t in trials], "no trial ran twice"
    assert [r.number for r in results] == [t.number for t in trials]
    by_number = {r.number: r for r in results}
    # the same recipe scores the same, in the killed process and in the retry alike
    assert by_number[10].metrics == pytest.approx(by_number[13].metrics, abs=1e-6)
    assert by_number[13].metrics == by_number[15].metrics
    assert by_number[12].metrics == pytest.approx(by_number[14].metrics, abs=1e-6)
    # the task runs as a pipeline step too; with every result there, nothing runs again
    assert main(["run", "--task", str(task_file)]) == 0
    assert results_file.read_bytes() == after


def test_serve_answers_trial_lines_from_one_process(
    sealed: Sealed, runner: TrialRunner, tmp_path: Path
) -> None:
    task = _task(sealed, tmp_path / "out", [])
    task_file = tmp_path / "task.json"
    task_file.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
    ties = TrialSpec(number=5, merge=TIES_BY_BLOCK)
    slerp = TrialSpec(number=7, merge=SLERP, parents=["sentiment", "topic"])
    lines = [
        ties.model_dump_json(by_alias=True, exclude_none=True),
        "",
        "not a trial",
        json.dumps({"number": 6, "merge": {"method": "crossover"}}),
        slerp.model_dump_json(by_alias=True, exclude_none=True),
        ties.model_dump_json(by_alias=True, exclude_none=True),
    ]
    with (tmp_path / "stderr.log").open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "studbook_trainer",
                "trials",
                "--task",
                str(task_file),
                "--serve",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=ENV,
        )
        assert proc.stdin is not None and proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] is True and ready["loadSeconds"] > 0
        # one trial at a time, as a search would ask
        proc.stdin.write(lines[0] + "\n")
        proc.stdin.flush()
        first = TrialResult.model_validate_json(proc.stdout.readline())
        proc.stdin.write("\n".join(lines[1:]) + "\n")
        proc.stdin.close()
        answers = [json.loads(line) for line in proc.stdout]
        assert proc.wait(60) == 0, (tmp_path / "stderr.log").read_text()
    assert first.number == 5 and first.metrics is not None
    expected = runner.run(ties)
    assert first.metrics == pytest.approx(expected.metrics, abs=1e-6)
    assert len(answers) == 4
    assert answers[0] == {"error": answers[0]["error"]} and "line 3" in answers[0]["error"]
    bad = TrialResult.model_validate(answers[1])
    assert bad.number == 6 and bad.error is not None and "line 4: not a trial" in bad.error
    assert TrialResult.model_validate(answers[2]).metrics == pytest.approx(
        runner.run(slerp).metrics, abs=1e-6
    )
    assert TrialResult.model_validate(answers[3]) == first, "a trial is never run twice"
    recorded = (tmp_path / "out" / TRIALS_FILE).read_text().splitlines()
    assert [TrialResult.model_validate_json(line).number for line in recorded] == [5, 7]


def test_search_candidates_run_as_trials(sealed: Sealed, runner: TrialRunner) -> None:
    """The recipes the search core proposes, per block and tensor kind, merge and score."""
    spec = BreedingRunSpec.model_validate(
        {
            "parentPool": [{"name": "base"}, {"name": "sentiment"}, {"name": "topic"}],
            "base": "base",
            "objectives": [{"metric": m} for m in OBJECTIVES[::2]],
            "searchSpace": {
                "methods": ["linear", "ties", "dare_ties", "slerp"],
                "densityRange": {"min": 0.3, "max": 0.9},
                "layerGranularity": "block",
                "blocks": 2,
                "tensorKinds": ["attention", "mlp"],
            },
            "strategy": "random",
            "budget": {"maxTrials": 8, "population": 4, "parallelism": 8},
            "seed": 5,
            "template": {"compatibility": COMPAT.to_wire(), "license": "Apache-2.0"},
            "policyRef": {"name": "p"},
            "evaluationSuiteRef": {"name": "s"},
        }
    )
    search = Search(spec, num_layers=6)
    candidates = search.ask(8)
    assert {c.recipe.method for c in candidates} >= {"slerp", "ties"}
    for candidate in candidates:
        result = runner.run(
            TrialSpec(
                number=candidate.number, merge=candidate.recipe, parents=list(candidate.parents)
            )
        )
        assert result.metrics is not None, (candidate.recipe, result.error)


def test_a_language_model_trial_scores_what_the_steps_score(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """Tiny GPT-2s, whose head is tied to their embeddings, scored by perplexity."""
    compat = Compatibility(
        base_family="gpt2-tiny", architecture="GPT2LMHeadModel", tokenizer_id="t"
    )
    store = tmp_path / "store"
    parents = [
        fx.sealed_founder(store, tiny_gpt2(tmp_path / name, tokenizer_dir, seed=seed), name, compat)
        for name, seed in (("base", 1), ("a", 2), ("b", 3))
    ]
    counting = write_jsonl(tmp_path / "counting.jsonl", lm_rows(24, seed=9))
    sealed = Sealed(store, parents, [_dataset("counting", counting, "causal-lm")])
    recipe = _recipe(
        method="task_arithmetic",
        base="base",
        weights=[{"parent": "a", "weight": 0.6}, {"parent": "b", "weight": 0.3}],
        dtype="float32",
    )
    objectives = ["counting/perplexity"]
    task = TrialTask(
        run="ml/lm-search",
        parents=parents,
        base="base",
        compatibility=compat,
        datasets=sealed.datasets,
        objectives=objectives,
        store=str(store),
        output=str(tmp_path / "out"),
        trials=[TrialSpec(number=0, merge=recipe)],
    )
    (result,) = run_trials(task, Options(device="cpu"))
    assert result.metrics is not None, result.error
    expected = _bred_and_evaluated(sealed, recipe, [], tmp_path, objectives, compat)
    assert result.metrics == pytest.approx(
        {"counting/perplexity": expected["counting/perplexity"]}, rel=1e-6
    )


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("linear", {}),
        ("ties", {"density": 0.4}),
        ("dare_ties", {"density": 0.5}),
        ("breadcrumbs", {"density": 0.5, "gamma": 0.05}),
        ("slerp", {"t": 0.3}),
        ("model_stock", {}),
    ],
)
def test_merge_state_holds_what_merge_writes(
    method: str,
    params: dict[str, float],
    tmp_path: Path,
    llama_a: Path,
    llama_b: Path,
    llama_base: Path,
) -> None:
    from studbook_trainer.merge import MergeParent, MergePlan, Override, merge, merge_state
    from studbook_trainer.merge.io import ModelReader

    from ._models import load_state

    base = None if method in ("linear", "slerp") else MergeParent("base", llama_base)
    plan = MergePlan(
        method=method,
        parents=(MergeParent("a", llama_a, {"weight": 0.7}), MergeParent("b", llama_b))
        if method not in ("slerp", "model_stock")
        else (MergeParent("a", llama_a), MergeParent("b", llama_b)),
        base=base,
        params=params,
        overrides=(Override("*.layers.1.*", {"density": 0.9} if "density" in params else {}),),
        seed=11,
        dtype="bfloat16",
        device="cpu",
    )
    merge(plan, tmp_path / "out")
    states = {}
    for name, path in (("a", llama_a), ("b", llama_b), ("base", llama_base)):
        with ModelReader(path) as reader:
            states[name] = {t: reader.get(t) for t in reader.tensors}
            config = reader.config
    held = merge_state(plan, states, config)
    written = load_state(tmp_path / "out")
    assert held.keys() == written.keys()
    for name, tensor in written.items():
        assert held[name].dtype == tensor.dtype and torch.equal(held[name], tensor), name


def _wire_task(**changes: Any) -> dict[str, Any]:
    digest = "sha256:" + "1" * 64
    task: dict[str, Any] = {
        "run": "ml/search",
        "parents": [
            {"name": n, "artifactId": digest, "uri": f"/store/{n}"} for n in ("base", "a", "b")
        ],
        "base": "base",
        "compatibility": COMPAT.to_wire(),
        "datasets": [
            {
                "name": "opt",
                "uri": "/data/opt.jsonl",
                "digest": digest,
                "role": "optimize",
                "task": "classification",
            }
        ],
        "objectives": ["opt/accuracy"],
        "store": "/store",
        "output": "/out",
        "trials": [{"number": 0, "merge": {"method": "linear"}}],
    }
    task.update(changes)
    return task


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": "c"}, "base c is not one of the parents"),
        (
            {"datasets": [{**_wire_task()["datasets"][0], "role": "gate"}]},
            "opt is a gate dataset: trials see optimize data only",
        ),
        ({"objectives": ["gate/accuracy"]}, "objective gate/accuracy is not <dataset>/<metric>"),
        ({"objectives": ["opt/latency_ms"]}, "latency_ms is measured, not computed"),
        (
            {"trials": [{"number": 1, "merge": {"method": "linear"}}] * 2},
            "trials must not list a number twice",
        ),
        (
            {"trials": [{"number": 1, "merge": {"method": "linear"}, "parents": ["a", "z"]}]},
            "trial 1 names parents the task lacks: ['z']",
        ),
    ],
)
def test_a_trials_task_is_refused_where_it_does_not_hold_together(
    changes: dict[str, Any], message: str
) -> None:
    assert TrialTask.model_validate(_wire_task())
    with pytest.raises(ValueError, match=re.escape(message)):
        TrialTask.model_validate(_wire_task(**changes))


def test_a_trial_result_holds_metrics_or_an_error() -> None:
    TrialResult(number=0, metrics={"opt/accuracy": 1.0})
    TrialResult(number=0, error="refused")
    for wrong in ({}, {"metrics": {"opt/accuracy": 1.0}, "error": "both"}):
        with pytest.raises(ValueError, match="either metrics or an error"):
            TrialResult(number=0, **wrong)
