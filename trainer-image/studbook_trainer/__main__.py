"""``python -m studbook_trainer run --task task.json``: what a breeding Job runs.

``evaluate`` hands over to the evaluation harness (``studbook_trainer.evaluation``);
``trials`` merges and scores a BreedingRun's trials in memory (``--serve``: keeps the parents
loaded and reads trials from stdin; :mod:`studbook_trainer.trials` describes the protocol);
``operators`` lists the operators and merge methods with their references.

Exit status: 0 on success; 2 (``studbook.api.task.EXIT_REFUSED``) for a step that cannot run as
written, which no retry changes (unknown operator, missing parent, incompatible parents,
configuration out of range, a refused file, data that does not match its digest); 1 for
anything else. The reason, one sentence, ends stderr and is the termination message
(:mod:`studbook_trainer.failures`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the task, map failures to exit codes with a clear message."""
    parser = argparse.ArgumentParser(prog="python -m studbook_trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one task file")
    run.add_argument("--task", type=Path, required=True, help="the task JSON")
    sub.add_parser("operators", help="list the operators and merge methods")
    evaluate = sub.add_parser("evaluate", help="evaluate a model on a suite, write its scorecard")
    evaluate.add_argument("--task", type=Path, required=True, help="the evaluation task JSON")
    evaluate.add_argument("--out", type=Path, help="the scorecard JSON (default: stdout)")
    trials = sub.add_parser("trials", help="merge and score a BreedingRun's trials in memory")
    trials.add_argument("--task", type=Path, required=True, help="the trials task JSON")
    trials.add_argument(
        "--serve",
        action="store_true",
        help="after the task's trials, read trials from stdin and answer each on stdout",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("studbook_trainer")

    if args.command == "trials":
        return _trials(args.task, args.serve, log)
    if args.command in ("run", "evaluate") and _is_pipeline_task(args.task):
        return _pipeline_step(args.task, log)
    if args.command == "evaluate":
        from studbook_trainer.evaluation.entrypoint import run_command

        return run_command(args)

    from studbook_trainer.failures import report
    from studbook_trainer.operators import OPERATORS
    from studbook_trainer.task import load_task

    if args.command == "operators":
        from studbook_trainer.merge import METHODS

        for name, op in sorted(OPERATORS.items()):
            print(f"{name:10s} {op.reference}")
        for name, method in sorted(METHODS.items()):
            print(f"merge:{name:20s} {method.reference}")
        return 0

    from studbook_trainer.runner import run_task

    try:
        task = load_task(args.task)
        run_task(task)
    except Exception as e:
        log.exception("task failed")
        return report(e)
    return 0


def _is_pipeline_task(path: Path) -> bool:
    """Whether a task file is one of the operator's (``studbook.api.task``)."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # the task loaders below report it
    return isinstance(data, dict) and data.get("schemaVersion") == "task.studbook.dev/v1"


def _pipeline_step(path: Path, log: logging.Logger) -> int:
    """Run a breed, evaluate or trials step of the operator's pipeline."""
    from pydantic import TypeAdapter, ValidationError

    from studbook.api.task import BreedTask, EvaluateTask, TrialTask
    from studbook_trainer.failures import StepRefused, report
    from studbook_trainer.steps import breed, evaluate_step

    try:
        task = TypeAdapter(BreedTask | EvaluateTask | TrialTask).validate_json(path.read_bytes())
    except ValidationError as e:
        return report(StepRefused(f"task refused: {e}"))
    try:
        if isinstance(task, BreedTask):
            breed(task)
        elif isinstance(task, TrialTask):
            from studbook_trainer.determinism import make_deterministic
            from studbook_trainer.trials import run_trials

            make_deterministic(task.suite_seed)
            run_trials(task)
        else:
            evaluate_step(task)
    except Exception as e:
        log.exception("%s step failed", task.step)
        return report(e)
    return 0


def _trials(path: Path, serving: bool, log: logging.Logger) -> int:
    """Run a trials task: its batch, or (``serving``) the line protocol on stdin and stdout."""
    import os

    from pydantic import ValidationError

    from studbook.api.task import TrialTask
    from studbook_trainer.determinism import make_deterministic
    from studbook_trainer.failures import StepRefused, report
    from studbook_trainer.trials import run_trials, serve

    try:
        task = TrialTask.model_validate_json(path.read_bytes())
    except OSError as e:
        return report(StepRefused(f"task file {path} cannot be read: {e.strerror}"))
    except ValidationError as e:
        return report(StepRefused(f"task refused: {e}"))
    make_deterministic(task.suite_seed)
    try:
        if not serving:
            run_trials(task)
            return 0
        # The protocol owns stdout: anything else written to it, by Python or by a library's
        # C code, goes to stderr instead.
        protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        with protocol:
            serve(task, sys.stdin, protocol)
    except Exception as e:
        log.exception("trials of %s failed", task.run)
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
