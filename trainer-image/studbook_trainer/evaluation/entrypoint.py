"""The evaluation task: a JSON task file in, a scorecard out.

The operator's evaluate Job runs ``python -m studbook_trainer.evaluation --task task.json --out
scorecard.json`` (or the trainer's ``evaluate`` subcommand, where the trainer has one). The task
file, camelCase like the API::

    {
      "suite": {"name": "sentiment-topic", "digest": "sha256:...", "spec": {<suite spec>}},
      "subject": {"name": "merged", "path": "/work/model", "artifactId": "sha256:..."},
      "parents": [{"name": "sentiment", "path": "/work/parents/sentiment",
                   "niche": {"taxonomy": ["classification/sentiment"]}}],
      "baseline": {"name": "uniform-merge", "path": "/work/baseline"},
      "champion": {"name": "current", "path": "/work/champion"},
      "optimizeOn": ["sentiment-optimize"],
      "options": {"device": "cpu", "batchSize": 64, "threads": 2, "measureLatency": true}
    }

``subject.artifactId`` defaults to the content id of the directory and ``suite.digest`` to the
digest of the spec. ``optimizeOn``, when a search asks for the evaluation, names the datasets it
tunes on; a gate or holdout dataset there refuses the task. Relative paths and dataset URIs are
read relative to the task file's directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from studbook.api.base import ApiModel
from studbook.api.common import Digest, Name, Niche
from studbook.api.scorecard import Scorecard
from studbook.api.suite import EvaluationSuiteSpec
from studbook_trainer.evaluation.data import check_suite_for_search
from studbook_trainer.evaluation.errors import EvaluationError, TaskSpecError
from studbook_trainer.evaluation.harness import ModelRef, Options, canonical_json, evaluate

Path_ = Annotated[str, Field(min_length=1, max_length=4096)]


class TaskModel(ApiModel):
    """A model of the task: a local directory with its name and, optionally, id and niche."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    """Its name in the scorecard."""
    path: Path_
    """The model directory."""
    artifact_id: Digest | None = None
    """Its artifact id."""
    niche: Niche = Niche()
    """Its niche (parents: whose probes run on the child)."""

    def ref(self, base_dir: Path | None) -> ModelRef:
        """The harness's view of it."""
        path = Path(self.path)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return ModelRef(self.name, path, self.artifact_id, tuple(self.niche.taxonomy))


class TaskSuite(ApiModel):
    """The suite: its resource name, digest and spec."""

    name: Name
    """The EvaluationSuite's name."""
    digest: Digest | None = None
    """Its digest (default: computed from the spec)."""
    spec: EvaluationSuiteSpec
    """The spec."""


class TaskOptions(ApiModel):
    """How the harness runs."""

    device: Annotated[str, Field(max_length=32)] = "cpu"
    """Where models run (``cpu``, ``cuda``, ``cuda:1``...)."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    """Examples per forward pass."""
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Torch CPU threads."""
    measure_latency: bool = True
    """Report latency (the one value that varies between runs)."""


class EvaluationTask(ApiModel):
    """What one evaluation Job does."""

    suite: TaskSuite
    """The suite."""
    subject: TaskModel
    """The model the scorecard is about."""
    parents: Annotated[list[TaskModel], Field(max_length=32)] = []
    """Its parents, compared with it and probed on their niches."""
    baseline: TaskModel | None = None
    """A simple baseline model (for a merge: the uniform linear merge of the parents)."""
    champion: TaskModel | None = None
    """The current champion."""
    optimize_on: Annotated[list[Name], Field(max_length=32)] = []
    """The datasets a search tunes on, when a search asks: only optimize datasets may be here."""
    options: TaskOptions = TaskOptions()
    """How the harness runs."""


def evaluate_task(task: Mapping[str, Any], base_dir: Path | None = None) -> Scorecard:
    """Run one evaluation task (the parsed task file) and return its scorecard."""
    try:
        spec = EvaluationTask.model_validate(dict(task))
    except ValidationError as exc:
        raise TaskSpecError(f"invalid evaluation task: {exc}") from exc
    if spec.optimize_on:
        check_suite_for_search(spec.suite.spec, spec.optimize_on)
    o = spec.options
    return evaluate(
        spec.suite.spec,
        spec.subject.ref(base_dir),
        suite_name=spec.suite.name,
        suite_digest_value=spec.suite.digest,
        parents=[p.ref(base_dir) for p in spec.parents],
        baseline=spec.baseline.ref(base_dir) if spec.baseline else None,
        champion=spec.champion.ref(base_dir) if spec.champion else None,
        options=Options(o.device, o.batch_size, o.threads, o.measure_latency),
        base_dir=base_dir,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--task`` and ``--out`` options, for this module's and the trainer's command line."""
    parser.add_argument("--task", required=True, type=Path, help="the task file (JSON)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the scorecard (default: stdout)"
    )


def run_command(args: argparse.Namespace) -> int:
    """Run the task named by parsed arguments; 0 on success, 2 on a refusal."""
    task_path: Path = args.task
    try:
        task = json.loads(task_path.read_text())
        if not isinstance(task, dict):
            raise TaskSpecError(f"{task_path}: a task file holds a JSON object")
        scorecard = evaluate_task(task, base_dir=task_path.parent)
    except (OSError, ValueError) as exc:
        if isinstance(exc, EvaluationError):  # pragma: no cover - not an OSError/ValueError
            raise
        print(f"{TaskSpecError.reason}: {exc}", file=sys.stderr)
        return 2
    except EvaluationError as exc:
        print(f"{exc.reason}: {exc}", file=sys.stderr)
        return 2
    body = canonical_json(scorecard)
    out: Path | None = args.out
    if out is None:
        sys.stdout.write(body.decode() + "\n")
    else:
        out.write_bytes(body)
    print(f"verdict {scorecard.verdict}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m studbook_trainer.evaluation --task task.json --out scorecard.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m studbook_trainer.evaluation",
        description="Evaluate a model on a suite and write its scorecard.",
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
