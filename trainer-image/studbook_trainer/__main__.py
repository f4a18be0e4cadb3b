"""``python -m studbook_trainer run --task task.json``: what a breeding Job runs.

``evaluate`` hands over to the evaluation harness (``studbook_trainer.evaluation``);
``operators`` lists the operators and merge methods with their references.

Exit status: 0 on success, 2 for a task that cannot run as written (unknown operator, missing
parent, incompatible parents, configuration out of range), 1 for anything else.
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("studbook_trainer")

    if args.command in ("run", "evaluate") and _is_pipeline_task(args.task):
        return _pipeline_step(args.task, log)
    if args.command == "evaluate":
        from studbook_trainer.evaluation.entrypoint import run_command

        return run_command(args)

    from studbook_trainer.merge import IncompatibleParentsError, MergeConfigError
    from studbook_trainer.operators import OPERATORS, OperatorError
    from studbook_trainer.task import TaskError, load_task

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
    except (TaskError, OperatorError, MergeConfigError, IncompatibleParentsError) as e:
        log.error("task refused: %s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        log.exception("task failed")
        print(f"error: task failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
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
    """Run a breed or evaluate step of the operator's pipeline."""
    from pydantic import TypeAdapter, ValidationError

    from studbook.api.task import BreedTask, EvaluateTask
    from studbook_trainer.steps import breed, evaluate_step

    try:
        task = TypeAdapter(BreedTask | EvaluateTask).validate_json(path.read_bytes())
    except ValidationError as e:
        print(f"error: task refused: {e}", file=sys.stderr)
        return 2
    try:
        if isinstance(task, BreedTask):
            breed(task)
        else:
            evaluate_step(task)
    except Exception as e:
        log.exception("%s step failed", task.step)
        print(f"error: {task.step} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
