"""A BreedingRun's trials: merge recipes in memory and score them, the parents loaded once.

:class:`TrialRunner` verifies and loads the parents of a :class:`~studbook.api.task.TrialTask`
once: each package is fetched from the store and checked against its artifact id, its tensors
are read into memory (on the device the trials run on), and the parents are checked for
compatibility. The model itself is built once per weight dtype from the configuration and
tokenizer of the task's base (else of its first parent). Each trial then

1. turns its recipe into the merge engine's plan as the merge step would
   (:func:`~studbook_trainer.task.operator_plan`,
   :func:`~studbook_trainer.operators.simple.engine_plan`);
2. merges the held parents with the engine's own per-tensor path
   (:func:`~studbook_trainer.merge.merge_state`: the same values a merge step would write);
3. loads the merged weights into the model held in memory (``load_state_dict``; nothing is
   written to disk);
4. scores it on the task's ``optimize`` datasets with the evaluation harness's own code
   (:func:`~studbook_trainer.evaluation.harness.run_dataset` and
   :func:`~studbook_trainer.evaluation.harness.measure`, the point estimate without bootstrap).

A trial whose recipe the engine refuses (a parent it does not have, a coefficient out of range,
too many parents for the method) or whose scoring fails is a :class:`~studbook.api.task.TrialResult`
with an ``error``, one sentence; the next trial runs. The same recipe gives the same metrics: a
merge depends only on the parents, the recipe (DARE's masks on its ``seed``) and the device type.

Two ways to run, sharing this code:

* **batch** (a trial Job): ``python -m studbook_trainer trials --task task.json`` runs the task's
  trials and appends each result to ``trials.jsonl`` in the task's output as it finishes, synced
  to disk, so progress shows and a crash loses nothing. A retried attempt of the same Job (same
  output) keeps the results already there and runs only the trials that lack one.
* **serve** (one local process for a whole search): ``python -m studbook_trainer trials --task
  task.json --serve`` loads the parents of the task, runs its trials if it lists any, then reads
  trials from stdin. The line protocol, one JSON object per line, UTF-8, camelCase keys:

  - stdout, once the parents are loaded: ``{"ready": true, "loadSeconds": 2.1}``. A task that
    cannot be loaded ends the process before this line, with exit status 2 for a refusal (a
    digest that does not match, incompatible parents) and 1 otherwise, and the reason, one
    sentence, last on stderr.
  - stdin, one trial per line: a :class:`~studbook.api.task.TrialSpec` (``{"number": 7,
    "merge": {...}, "parents": ["minilm-base", ...]}``; ``parents`` may be left out: all of the
    task's). Blank lines are skipped; end of input ends the process with exit status 0.
  - stdout, one line per trial line, in order, once it finished: its
    :class:`~studbook.api.task.TrialResult` (``{"number": 7, "metrics": {"sentiment-optimize/
    accuracy": 0.91}, "mergeSeconds": 0.8, "scoreSeconds": 0.2}``, or ``"error"`` in place of
    ``"metrics"``). A trial already in ``trials.jsonl`` is answered from there, not run again.
  - stdout, for a line that is no trial: a trial result with the ``error`` when the line names a
    number, else ``{"error": "line 3: ..."}``.

  Only protocol lines go to stdout (anything else the process prints goes to stderr); logs go
  to stderr. Results are appended to ``trials.jsonl`` in serve mode too.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from pydantic import ValidationError

from studbook.api.task import TRIALS_FILE, TrialResult, TrialSpec, TrialTask
from studbook.artifacts import Store
from studbook_trainer.evaluation.data import Dataset, read_datasets
from studbook_trainer.evaluation.errors import EvaluationError, ModelLoadError
from studbook_trainer.evaluation.harness import Options, measure, model_kind, run_dataset
from studbook_trainer.evaluation.models import (
    HFClassifier,
    HFLanguageModel,
    build_model,
    load_weights,
)
from studbook_trainer.evaluation.tasks import TASK_METRICS
from studbook_trainer.failures import StepRefused, sentence
from studbook_trainer.merge import check_compatible, merge_state
from studbook_trainer.merge.io import ModelReader
from studbook_trainer.operators.base import LocalParent, OperatorError
from studbook_trainer.operators.simple import engine_plan
from studbook_trainer.steps import fetch_package
from studbook_trainer.task import normalize, operator_plan

log = logging.getLogger("studbook_trainer.trials")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RUN_METRICS = frozenset({"size_bytes"})
"""Objective metrics of the merged model itself rather than of its outputs."""


class TrialsRefused(StepRefused):
    """A trials task that cannot run as written: its objectives do not fit its data."""


class TrialRunner:
    """The parents of a trials task held in memory, and the model that recipes are merged into.

    Building one verifies the datasets against their digests, then fetches and verifies every
    parent package, reads its tensors once and checks the parents' compatibility, and builds the
    model. :meth:`run` merges and scores one trial; nothing of it touches the disk.
    """

    def __init__(self, task: TrialTask, scratch: Path, options: Options | None = None) -> None:
        started = time.perf_counter()
        self.task = task
        self.options = options or Options(device="cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(self.options.device)
        # the data first, as evaluation does: a dataset that does not match refuses the task
        # before any model is read
        self.datasets: dict[str, Dataset] = read_datasets(task.datasets)
        store = Store.open(task.store)
        self.dirs: dict[str, Path] = {
            p.name: fetch_package(store, p, scratch) for p in task.parents
        }
        self.reference = task.base or task.parents[0].name
        """The parent whose configuration and tokenizer the model is built from."""
        self.kind = model_kind((d.task for d in task.datasets), self.dirs[self.reference])
        self._check_objectives()
        self.configs: dict[str, dict[str, Any] | None] = {}
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        """Every parent's tensors by name, as stored, on the trials' device."""
        readers = {name: ModelReader(path) for name, path in self.dirs.items()}
        try:
            order = [self.reference, *(n for n in readers if n != self.reference)]
            check_compatible([(n, readers[n]) for n in order], allow_dtype_mismatch=True)
            self._check_labels(readers)
            for name, reader in readers.items():
                self.configs[name] = reader.config
                self.states[name] = {t: reader.get(t).to(self.device) for t in reader.tensors}
        finally:
            for reader in readers.values():
                reader.close()
        self._models: dict[str, HFClassifier | HFLanguageModel] = {}
        first = task.trials[0].merge.dtype if task.trials else "float32"
        self.model(first)  # a parent the model cannot take refuses the task now
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded %d parents of %s in %.1f s on %s",
            len(self.states),
            task.run,
            self.load_seconds,
            self.device,
        )

    def _check_objectives(self) -> None:
        """Refuse objectives whose metric a built-in task does not compute."""
        for objective in self.task.objectives:
            name, _, metric = objective.partition("/")
            task = self.datasets[name].spec.task
            known = TASK_METRICS.get(task)
            if known is not None and metric not in known | RUN_METRICS:
                raise TrialsRefused(
                    f"objective {objective}: a {task} dataset gives"
                    f" {', '.join(sorted(known | RUN_METRICS))}, not {metric}"
                )

    def _check_labels(self, readers: Mapping[str, ModelReader]) -> None:
        """Refuse classifiers that name their classes differently: they share one model."""
        if self.kind != "classification":
            return
        labels = {name: (r.config or {}).get("label2id") for name, r in readers.items()}
        ours = labels[self.reference]
        for name, theirs in labels.items():
            if theirs != ours:
                raise TrialsRefused(
                    f"parents {self.reference!r} and {name!r} name their classes differently:"
                    f" {ours} != {theirs}"
                )

    def model(self, dtype: str) -> HFClassifier | HFLanguageModel:
        """The model whose weights are held in ``dtype``, built on first use."""
        found = self._models.get(dtype)
        if found is None:
            if dtype not in _DTYPES:
                raise OperatorError(f"unsupported dtype {dtype!r}")
            found = build_model(
                self.dirs[self.reference],
                self.kind,
                dtype=_DTYPES[dtype],
                device=self.options.device,
                batch_size=self.options.batch_size,
            )
            try:
                load_weights(found.model, self.states[self.reference])
            except ModelLoadError as e:
                raise ModelLoadError(f"parent {self.reference}: {e}") from None
            self._models[dtype] = found
        return found

    def merge(self, trial: TrialSpec) -> HFClassifier | HFLanguageModel:
        """The model with the trial's recipe merged into it."""
        listed = trial.parents or [p.name for p in self.task.parents]
        unknown = [n for n in listed if n not in self.states]
        if unknown:
            raise OperatorError(f"the trial names parents the task lacks: {unknown}")
        plan = engine_plan(
            operator_plan("merge", normalize(trial.merge.to_wire())),
            [LocalParent(n, self.dirs[n]) for n in listed],
            str(self.device),
        )
        reference = plan.base.name if plan.base is not None else plan.parents[0].name
        merged = merge_state(plan, self.states, self.configs[reference])
        model = self.model(trial.merge.dtype)
        load_weights(model.model, merged)
        return model

    def score(self, model: HFClassifier | HFLanguageModel, trial: int) -> dict[str, float]:
        """The value of every objective, as the evaluation harness computes it."""
        runs = {}
        values: dict[str, float] = {}
        for objective in self.task.objectives:
            name, _, metric = objective.partition("/")
            if metric == "size_bytes":
                values[objective] = float(model.size_bytes)
                continue
            dataset = self.datasets[name]
            if name not in runs:
                runs[name] = run_dataset(
                    model,
                    dataset,
                    seed=self.task.suite_seed,
                    batch_size=self.options.batch_size,
                )
            found = measure(
                metric,
                runs[name],
                dataset,
                model=f"trial {trial}",
                seed=self.task.suite_seed,
                bins=self.task.calibration_bins,
                bootstrap=None,
            )
            if found is None:
                raise EvaluationError(f"objective {objective}: {metric} does not apply to {name}")
            values[objective] = found.value
        return values

    def run(self, trial: TrialSpec) -> TrialResult:
        """Merge and score one trial; a failure is a result with its reason, never raised."""
        started = time.perf_counter()
        merged_at: float | None = None
        try:
            model = self.merge(trial)
            merged_at = time.perf_counter()
            metrics = self.score(model, trial.number)
        except Exception as e:  # a trial fails alone; the batch goes on
            if not isinstance(e, StepRefused):
                log.exception("trial %d failed", trial.number)
            now = time.perf_counter()
            return TrialResult(
                number=trial.number,
                error=sentence(e),
                merge_seconds=(merged_at or now) - started,
                score_seconds=now - merged_at if merged_at is not None else 0.0,
            )
        done = time.perf_counter()
        return TrialResult(
            number=trial.number,
            metrics=metrics,
            merge_seconds=merged_at - started,
            score_seconds=done - merged_at,
        )


class TrialLog:
    """``trials.jsonl`` in a task's output: one result a line, each synced once written.

    Opening it keeps the results an earlier attempt of the same Job wrote; a last line the
    attempt did not finish writing is cut off.
    """

    def __init__(self, output: Path) -> None:
        output.mkdir(parents=True, exist_ok=True)
        self.path = output / TRIALS_FILE
        self.done: dict[int, TrialResult] = {}
        """The results already written, by trial number."""
        if self.path.exists():
            data = self.path.read_bytes()
            good = 0
            for line in data.splitlines(keepends=True):
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("an unfinished line")
                    result = TrialResult.model_validate_json(line)
                except ValueError:
                    break
                self.done.setdefault(result.number, result)
                good += len(line)
            if good < len(data):
                log.warning("cutting %s after its %d whole results", self.path, len(self.done))
                with self.path.open("r+b") as f:
                    f.truncate(good)
        self._file = self.path.open("ab")

    def append(self, result: TrialResult) -> None:
        """Write one result and sync it to disk."""
        self._file.write(json.dumps(result.to_wire(), sort_keys=True).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.setdefault(result.number, result)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _logged(result: TrialResult) -> TrialResult:
    if result.error is not None:
        seconds = result.merge_seconds + result.score_seconds
        log.info("trial %d failed in %.2f s: %s", result.number, seconds, result.error)
    else:
        log.info(
            "trial %d: merged in %.2f s, scored in %.2f s: %s",
            result.number,
            result.merge_seconds,
            result.score_seconds,
            result.metrics,
        )
    return result


def run_trials(task: TrialTask, options: Options | None = None) -> list[TrialResult]:
    """Batch mode: every trial of the task, each result appended to ``trials.jsonl`` at once.

    Trials that already have a result there (an earlier attempt of the same Job) are not run
    again. Returns the results of every trial of the task, in task order.
    """
    record = TrialLog(Path(task.output))
    try:
        pending = [t for t in task.trials if t.number not in record.done]
        if pending:
            with tempfile.TemporaryDirectory(prefix="studbook-trials-") as tmp:
                runner = TrialRunner(task, Path(tmp), options)
                for trial in pending:
                    record.append(_logged(runner.run(trial)))
        log.info("%d trials of %s done (%d run now)", len(task.trials), task.run, len(pending))
        return [record.done[t.number] for t in task.trials]
    finally:
        record.close()


def _trial_lines(lines: Iterable[str]) -> Iterator[TrialSpec | dict[str, Any]]:
    """The trials of the input lines; a line that is none gives its answer instead."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield TrialSpec.model_validate_json(line)
        except ValidationError as e:
            reason = f"line {n}: not a trial: {' '.join(str(e).split())}"[:1000]
            try:
                number = json.loads(line).get("number")
            except (ValueError, AttributeError):
                number = None
            if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
                yield TrialResult(number=number, error=reason).to_wire()
            else:
                yield {"error": reason}


def serve(
    task: TrialTask, stdin: Iterable[str], stdout: IO[str], options: Options | None = None
) -> None:
    """Serve mode: load the parents once, then answer trial lines (see the module's protocol)."""

    def say(message: Mapping[str, Any]) -> None:
        stdout.write(json.dumps(message, sort_keys=True) + "\n")
        stdout.flush()

    record = TrialLog(Path(task.output))
    try:
        with tempfile.TemporaryDirectory(prefix="studbook-trials-") as tmp:
            runner = TrialRunner(task, Path(tmp), options)
            say({"ready": True, "loadSeconds": round(runner.load_seconds, 3)})

            def answer(trial: TrialSpec) -> None:
                result = record.done.get(trial.number)
                if result is None:
                    result = _logged(runner.run(trial))
                    record.append(result)
                say(result.to_wire())

            for trial in task.trials:
                answer(trial)
            for item in _trial_lines(stdin):
                if isinstance(item, TrialSpec):
                    answer(item)
                else:
                    say(item)
    finally:
        record.close()
