"""The harness: one suite, one subject model, and everything it is compared with, in one run.

:func:`evaluate` reads and digest-checks every dataset before any model is loaded, runs the
subject, its parents, the baselines, the parents' output ensemble and the champion on every
dataset, and writes a :class:`~studbook.api.scorecard.Scorecard`: metrics with bootstrap
intervals, niche probes, comparisons, calibration, the resource profile, the objective with the
net gain over the best parent, and the verdict of the suite's thresholds with its reasons.

Determinism: the scorecard holds no timestamps; bootstrap resamples are seeded by the suite seed;
models run in eval mode under inference mode, in a fixed batch order. The one measured value is
latency (``profile.latencyMsPerExample`` and any ``latency_ms`` metric); with
``Options(measure_latency=False)`` they are left out and the same model, suite and seed give the
same scorecard, byte for byte in canonical JSON.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import rfc8785
import torch

from studbook.api.scorecard import (
    Calibration,
    Comparison,
    MetricResult,
    NicheResult,
    Objective,
    Profile,
    Scorecard,
    SuiteRef,
)
from studbook.api.suite import Bootstrap, EvaluationSuiteSpec
from studbook_trainer.evaluation.data import Dataset, load_datasets
from studbook_trainer.evaluation.errors import (
    EvaluationError,
    MissingWeightsError,
    ModelLoadError,
)
from studbook_trainer.evaluation.metrics import Estimate, ece_of, point, tidy
from studbook_trainer.evaluation.models import (
    Classifier,
    ClassifierEnsemble,
    LanguageModel,
    LanguageModelEnsemble,
    PriorClassifier,
    Probe,
    load_classifier,
    load_language_model,
)
from studbook_trainer.evaluation.tasks import (
    ClassificationOutputs,
    Run,
    TaskContext,
    estimate,
    run_classification,
    run_custom,
    run_language_model,
)

DEFAULT_METRIC = {"classification": "accuracy", "causal-lm": "perplexity", "custom": "custom"}
"""The metric of a dataset no suite metric names."""

NATURAL_DIRECTION = {"perplexity": "minimize", "ece": "minimize", "latency_ms": "minimize"}
"""Metrics where lower is better when the suite does not say (every other: higher)."""

RUN_METRICS = frozenset({"latency_ms", "size_bytes"})
"""Metrics of the run rather than of the model's outputs."""


@dataclass(frozen=True)
class ModelRef:
    """A model to evaluate or compare with: a local transformers directory."""

    name: str
    """Its name in the scorecard (a parent's Descendant name, ``uniform-merge``...)."""
    path: Path
    """The directory (safetensors, config, tokenizer)."""
    artifact_id: str | None = None
    """Its artifact id, when it has one."""
    niche: Sequence[str] = ()
    """Taxonomy paths of its niche; a parent's niche probes are evaluated on the child."""


@dataclass(frozen=True)
class Options:
    """How the harness runs (none of these change a scorecard, bar latency)."""

    device: str = "cpu"
    """Where models run."""
    batch_size: int = 64
    """Examples per forward pass."""
    threads: int | None = None
    """Torch CPU threads; ``None`` leaves torch's default."""
    measure_latency: bool = True
    """Report latency; leave it out for byte-identical scorecards across runs."""


@dataclass
class _Evaluated:
    """A model's runs on every dataset."""

    name: str
    runs: dict[str, Run] = field(default_factory=dict)
    parameters: int = 0
    size_bytes: int = 0


def suite_digest(suite: EvaluationSuiteSpec) -> str:
    """``sha256:`` of the RFC 8785 canonical JSON of the suite spec (its wire form)."""
    return "sha256:" + hashlib.sha256(rfc8785.dumps(suite.to_wire())).hexdigest()


def directory_id(path: Path) -> str:
    """The artifact id of a model directory, as its sealed package would have it."""
    from studbook.artifacts.digest import artifact_id, hash_files, local_range_reader, scan_local

    hashed = hash_files(scan_local(path), local_range_reader(path))
    return artifact_id(h.entry for h in hashed)


def canonical_json(scorecard: Scorecard) -> bytes:
    """The scorecard's RFC 8785 canonical JSON: the bytes that are signed and compared."""
    return bytes(rfc8785.dumps(scorecard.to_wire()))


def model_kind(tasks: Iterable[str], path: Path) -> str:
    """Whether datasets of these tasks score a model as ``classification`` or ``causal-lm``.

    Built-in tasks decide; with only custom tasks, the model's ``config.json`` does.
    """
    kinds = set(tasks)
    if {"classification", "causal-lm"} <= kinds:
        raise EvaluationError("a suite mixes classification and causal-lm datasets")
    if "classification" in kinds:
        return "classification"
    if "causal-lm" in kinds:
        return "causal-lm"
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read config.json: {exc}") from exc
    architectures = " ".join(config.get("architectures") or [])
    return "causal-lm" if "CausalLM" in architectures else "classification"


def run_dataset(
    model: Classifier | LanguageModel, dataset: Dataset, *, seed: int, batch_size: int
) -> Run:
    """A model's outputs on one dataset, as its task reads them (``seed``: the suite's)."""
    task = dataset.spec.task
    if task == "custom":
        return run_custom(model, dataset, TaskContext(dataset.name, seed, batch_size))
    if task == "classification":
        if not isinstance(model, Classifier):
            raise ModelLoadError(f"{dataset.name}: a classification dataset needs a classifier")
        return run_classification(model, dataset)
    if not isinstance(model, LanguageModel):
        raise ModelLoadError(f"{dataset.name}: a causal-lm dataset needs a language model")
    return run_language_model(model, dataset, batch_size)


def measure(
    metric: str,
    run: Run,
    dataset: Dataset,
    *,
    model: str,
    seed: int,
    bins: int,
    bootstrap: Bootstrap | None,
) -> Estimate | None:
    """A metric of ``model``'s run on a dataset, as a scorecard reports it.

    ``None`` where the metric does not apply; ``bootstrap`` ``None`` gives the point estimate
    alone, without an interval. Metrics of the run (``latency_ms``, ``size_bytes``) are the
    caller's. A value that is not finite is refused.
    """
    found = estimate(
        metric,
        run.outputs,
        dataset.spec,
        samples=bootstrap.samples if bootstrap is not None else 0,
        confidence=bootstrap.confidence if bootstrap is not None else 0.95,
        seed=seed,
        bins=bins,
    )
    if found is not None and not math.isfinite(found.value):
        raise EvaluationError(f"{dataset.name}/{metric} of {model} is not finite")
    return found


class _Harness:
    def __init__(
        self, suite: EvaluationSuiteSpec, datasets: Mapping[str, Dataset], options: Options
    ) -> None:
        self.suite = suite
        self.datasets = datasets
        self.options = options
        self.probed: list[str] = []

    @cached_property
    def probe(self) -> Probe | None:
        """The suite's ``optimize`` classification examples, to fit an encoder's head on."""
        listed = [d for d in self.datasets.values() if d.spec.task == "classification"]
        fit = [r for d in listed if d.spec.role == "optimize" for r in d.records]
        labels = [r["label"] for d in listed for r in d.records]
        if not fit or not all(isinstance(label, int) for label in labels):
            return None
        return Probe(
            texts=[r["text"] for r in fit],
            labels=[r["label"] for r in fit],
            num_labels=max(labels) + 1,
        )

    def load(self, ref: ModelRef, kind: str) -> Classifier | LanguageModel:
        if kind == "classification":
            probe = self.probe
            try:
                model = load_classifier(
                    ref.path,
                    device=self.options.device,
                    batch_size=self.options.batch_size,
                    probe=probe,
                )
            except MissingWeightsError as exc:
                if probe is not None:
                    raise
                raise MissingWeightsError(
                    f"{exc}; an encoder is scored through a linear probe only when the suite has "
                    "optimize classification datasets with integer labels"
                ) from exc
            if model.probed:
                self.probed.append(ref.name)
            return model
        return load_language_model(ref.path, device=self.options.device)

    def run(self, name: str, model: Classifier | LanguageModel) -> _Evaluated:
        evaluated = _Evaluated(name, parameters=model.parameters, size_bytes=model.size_bytes)
        for dataset in self.datasets.values():
            evaluated.runs[dataset.name] = self.run_one(model, dataset)
        return evaluated

    def run_one(self, model: Classifier | LanguageModel, dataset: Dataset) -> Run:
        return run_dataset(model, dataset, seed=self.suite.seed, batch_size=self.options.batch_size)

    def estimate(self, evaluated: _Evaluated, dataset: str, metric: str) -> Estimate | None:
        if metric == "size_bytes":
            return Estimate(float(evaluated.size_bytes), None, None, 0)
        run = evaluated.runs.get(dataset)
        if run is None:
            return None
        if metric == "latency_ms":
            if not self.options.measure_latency:
                return None
            n = len(self.datasets[dataset])
            return Estimate(tidy(1000.0 * run.seconds / n), None, None, n)
        return measure(
            metric,
            run,
            self.datasets[dataset],
            model=evaluated.name,
            seed=self.suite.seed,
            bins=self.suite.calibration_bins,
            bootstrap=self.suite.bootstrap,
        )


def _directions(suite: EvaluationSuiteSpec) -> dict[tuple[str, str], str]:
    """Every (dataset, metric) the scorecard reports, with its direction, in suite order."""
    wanted: dict[tuple[str, str], str] = {}
    for m in suite.metrics:
        wanted.setdefault((m.dataset, m.name), m.direction)
    for t in suite.thresholds:
        wanted.setdefault((t.dataset, t.metric), NATURAL_DIRECTION.get(t.metric, "maximize"))
    for name in _objective_datasets(suite):
        metric = _first_metric(suite, name)
        wanted.setdefault((name, metric), NATURAL_DIRECTION.get(metric, "maximize"))
    return wanted


def _objective_datasets(suite: EvaluationSuiteSpec) -> list[str]:
    if suite.objective:
        return list(suite.objective)
    return [d.name for d in suite.datasets if d.role == "gate"]


def _first_metric(suite: EvaluationSuiteSpec, dataset: str) -> str:
    for m in suite.metrics:
        if m.dataset == dataset and m.name not in RUN_METRICS:
            return m.name
    task = next(d.task for d in suite.datasets if d.name == dataset)
    return DEFAULT_METRIC[task]


def _objective_value(
    values: Mapping[str, float], keys: Sequence[str], directions: Mapping[str, str]
) -> float | None:
    """The mean over the objective's metrics, minimized ones negated (higher is better)."""
    if any(k not in values for k in keys):
        return None
    signed = [values[k] if directions[k] == "maximize" else -values[k] for k in keys]
    return tidy(sum(signed) / len(signed))


def _matches(taxonomy: str, niche: Sequence[str]) -> bool:
    return any(taxonomy == n or taxonomy.startswith(n.rstrip("/") + "/") for n in niche)


def evaluate(
    suite: EvaluationSuiteSpec,
    subject: ModelRef,
    *,
    suite_name: str,
    suite_digest_value: str | None = None,
    parents: Sequence[ModelRef] = (),
    baseline: ModelRef | None = None,
    champion: ModelRef | None = None,
    options: Options | None = None,
    base_dir: Path | None = None,
) -> Scorecard:
    """Evaluate ``subject`` on ``suite`` and compare it with everything given, in one run.

    ``baseline`` is a model directory used as the simple baseline (for a merge, the uniform
    linear merge of the parents, which the caller builds); classification suites also get the
    majority-class baseline. Datasets are read relative to ``base_dir`` when their URI is a
    relative path. Raises :class:`~studbook_trainer.evaluation.errors.EvaluationError`
    subclasses, a dataset refusal always before any model is loaded.
    """
    options = options or Options()
    datasets = load_datasets(suite, base_dir)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.manual_seed(suite.seed)
    harness = _Harness(suite, datasets, options)
    kind = model_kind((d.task for d in suite.datasets), subject.path)

    child = harness.run(subject.name, harness.load(subject, kind))
    evaluated_parents: list[tuple[ModelRef, _Evaluated]] = []
    loaded_parents: list[Classifier | LanguageModel] = []
    for ref in parents:
        model = harness.load(ref, kind)
        evaluated_parents.append((ref, harness.run(ref.name, model)))
        loaded_parents.append(model)

    others: list[tuple[str, str, str | None, _Evaluated]] = [
        ("parent", ref.name, ref.artifact_id, ev) for ref, ev in evaluated_parents
    ]
    if baseline is not None:
        others.append(
            (
                "baseline",
                baseline.name,
                baseline.artifact_id,
                harness.run(baseline.name, harness.load(baseline, kind)),
            )
        )
    if kind == "classification":
        others.append(("baseline", "majority-class", None, _majority(harness, child)))
    if suite.compare_ensemble and len(loaded_parents) >= 2:
        runs = [ev for _, ev in evaluated_parents]
        others.append(
            ("ensemble", "ensemble", None, _ensemble(harness, loaded_parents, kind, runs))
        )
    del loaded_parents
    if champion is not None:
        others.append(
            (
                "champion",
                champion.name,
                champion.artifact_id,
                harness.run(champion.name, harness.load(champion, kind)),
            )
        )

    wanted = _directions(suite)
    metrics: list[MetricResult] = []
    values: dict[str, float] = {}
    for (dataset, metric), direction in wanted.items():
        found = harness.estimate(child, dataset, metric)
        if found is None:
            continue
        result = MetricResult(
            dataset=dataset,
            metric=metric,
            value=found.value,
            ci_low=found.ci_low,
            ci_high=found.ci_high,
            n=found.n,
            direction=direction,  # type: ignore[arg-type]
        )
        metrics.append(result)
        values[result.key] = found.value

    comparison_keys = [(d, m) for d, m in wanted if m != "latency_ms"]
    comparisons = []
    comparison_values: dict[str, dict[str, float]] = {}
    for role, name, artifact, ev in others:
        found_values: dict[str, float] = {}
        for dataset, metric in comparison_keys:
            est = harness.estimate(ev, dataset, metric)
            if est is not None:
                found_values[f"{dataset}/{metric}"] = est.value
        comparison_values[f"{role}:{name}"] = found_values
        comparisons.append(
            Comparison(role=role, name=name, artifact_id=artifact, metrics=found_values)  # type: ignore[arg-type]
        )

    niches = _niches(harness, suite, child, evaluated_parents)
    objective = _objective(suite, wanted, values, evaluated_parents, comparison_values)
    verdict, reasons = _verdict(suite, values)
    profile = None
    if options.measure_latency:
        seconds = sum(r.seconds for r in child.runs.values())
        examples = sum(len(d) for d in datasets.values())
        profile = Profile(
            parameters=child.parameters,
            size_bytes=child.size_bytes,
            latency_ms_per_example=tidy(1000.0 * seconds / max(examples, 1)),
        )
    return Scorecard(
        subject=subject.artifact_id or directory_id(subject.path),
        suite=SuiteRef(
            name=suite_name, version=suite.version, digest=suite_digest_value or suite_digest(suite)
        ),
        seed=suite.seed,
        metrics=metrics,
        niches=niches,
        comparisons=comparisons,
        calibration=_calibration(suite, child, subject.niche),
        profile=profile,
        objective=objective,
        verdict=verdict,
        reasons=reasons,
        probed=harness.probed,
    )


def _majority(harness: _Harness, child: _Evaluated) -> _Evaluated:
    """Per classification dataset: always predict its most frequent class, with its frequencies."""
    evaluated = _Evaluated("majority-class")
    for name, run in child.runs.items():
        if not isinstance(run.outputs, ClassificationOutputs):
            continue
        classes = run.outputs.probs.shape[1]
        prior = np.bincount(run.outputs.labels, minlength=classes).astype(np.float64)
        model = PriorClassifier(prior / prior.sum())
        probs = model.predict_proba([""] * len(run.outputs.labels))
        evaluated.runs[name] = Run(ClassificationOutputs(probs, run.outputs.labels), 0.0)
    return evaluated


def _ensemble(
    harness: _Harness,
    members: Sequence[Classifier | LanguageModel],
    kind: str,
    runs: Sequence[_Evaluated],
) -> _Evaluated:
    """The parents' output ensemble (mean probabilities) on every dataset.

    On classification datasets the mean of the parents' probabilities is taken from their runs
    (exactly what :class:`ClassifierEnsemble` would compute, without running the parents again);
    other datasets run the ensemble model.
    """
    if kind == "classification":
        classifiers = [m for m in members if isinstance(m, Classifier)]
        ensemble: Classifier | LanguageModel = ClassifierEnsemble(classifiers)
    else:
        models = [m for m in members if isinstance(m, LanguageModel)]
        ensemble = LanguageModelEnsemble(models)
    evaluated = _Evaluated(
        "ensemble", parameters=ensemble.parameters, size_bytes=ensemble.size_bytes
    )
    for dataset in harness.datasets.values():
        parts = [r.runs[dataset.name] for r in runs]
        outputs = [p.outputs for p in parts]
        if all(isinstance(o, ClassificationOutputs) for o in outputs):
            classification = [o for o in outputs if isinstance(o, ClassificationOutputs)]
            probs = np.mean([o.probs for o in classification], axis=0)
            evaluated.runs[dataset.name] = Run(
                ClassificationOutputs(probs, classification[0].labels),
                sum(p.seconds for p in parts),
            )
        else:
            evaluated.runs[dataset.name] = harness.run_one(ensemble, dataset)
    return evaluated


def _niches(
    harness: _Harness,
    suite: EvaluationSuiteSpec,
    child: _Evaluated,
    parents: Sequence[tuple[ModelRef, _Evaluated]],
) -> list[NicheResult]:
    results = []
    for ref, parent in parents:
        for probe in suite.niche_probes:
            if not _matches(probe.taxonomy, ref.niche):
                continue
            before = harness.estimate(parent, probe.dataset, probe.metric)
            after = harness.estimate(child, probe.dataset, probe.metric)
            if before is None or after is None:
                raise EvaluationError(
                    f"niche probe {probe.name}: {probe.metric} does not apply to {probe.dataset}"
                )
            results.append(
                NicheResult(
                    probe=probe.name,
                    parent=ref.name,
                    metric=probe.metric,
                    parent_value=before.value,
                    child_value=after.value,
                )
            )
    return results


def _objective(
    suite: EvaluationSuiteSpec,
    wanted: Mapping[tuple[str, str], str],
    values: Mapping[str, float],
    parents: Sequence[tuple[ModelRef, _Evaluated]],
    comparison_values: Mapping[str, Mapping[str, float]],
) -> Objective | None:
    keys = [f"{d}/{_first_metric(suite, d)}" for d in _objective_datasets(suite)]
    if not keys:
        return None
    directions = {f"{d}/{m}": direction for (d, m), direction in wanted.items()}
    value = _objective_value(values, keys, directions)
    if value is None:
        return None
    scored = [
        (v, ref.name)
        for ref, _ in parents
        if (v := _objective_value(comparison_values[f"parent:{ref.name}"], keys, directions))
        is not None
    ]
    if not scored:
        return Objective(metrics=keys, value=value)
    best_value, best_name = min(scored, key=lambda s: (-s[0], s[1]))
    return Objective(
        metrics=keys,
        value=value,
        best_parent=best_name,
        best_parent_value=best_value,
        net_gain=tidy(value - best_value),
    )


def _verdict(suite: EvaluationSuiteSpec, values: Mapping[str, float]) -> tuple[Any, list[str]]:
    """``pass`` with no reasons, ``fail`` with every bound crossed, or ``inconclusive``."""
    failed: list[str] = []
    missing: list[str] = []
    for t in suite.thresholds:
        key = f"{t.dataset}/{t.metric}"
        value = values.get(key)
        if value is None:
            missing.append(f"{key}: not measured, so its threshold cannot be checked")
            continue
        if t.min is not None and value < t.min:
            failed.append(f"{key} = {value:.4g} is below the suite minimum {t.min:g}")
        if t.max is not None and value > t.max:
            failed.append(f"{key} = {value:.4g} is above the suite maximum {t.max:g}")
    if failed:
        return "fail", failed + missing
    if missing:
        return "inconclusive", missing
    return "pass", []


def _calibration(
    suite: EvaluationSuiteSpec, child: _Evaluated, niche: Sequence[str]
) -> list[Calibration]:
    # A dataset is outside the niche when no probe that uses it measures a declared niche.
    outside: dict[str, bool] = {}
    for probe in suite.niche_probes:
        foreign = not _matches(probe.taxonomy, niche)
        outside[probe.dataset] = outside.get(probe.dataset, True) and foreign
    results = []
    for name, run in child.runs.items():
        outputs = run.outputs
        if not isinstance(outputs, ClassificationOutputs):
            continue
        ece = point(
            ece_of(outputs.confidence, outputs.correct, suite.calibration_bins),
            n=len(outputs.labels),
        )
        abstention = None
        if suite.abstain_below is not None:
            abstention = tidy(float((outputs.confidence < suite.abstain_below).mean()))
        results.append(
            Calibration(
                dataset=name,
                ece=ece,
                abstention_rate=abstention,
                outside_niche=outside.get(name),
            )
        )
    return results
