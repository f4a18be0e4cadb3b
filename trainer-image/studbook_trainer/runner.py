"""Run a task: fetch the inputs, run the operator into a temporary directory, then publish it.

The output appears complete or not at all: the operator writes into a fresh directory beside
the destination, which is renamed into place only after the operator succeeded (a remote
destination is uploaded only then, with a ``_COMPLETE`` marker written last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from studbook_trainer.determinism import make_deterministic
from studbook_trainer.operators import LocalParent, RunContext, get_operator
from studbook_trainer.task import Source, Task, TaskError

log = logging.getLogger("studbook_trainer")

REPORT = "studbook_trainer_report.json"
"""Written into every output: operator, configuration, parents and the operator's report."""


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def fetch(source: Source, scratch: Path, *, kind: str) -> Path:
    """A local path for a parent or dataset, downloading a remote one, checking its digest."""
    if _is_local(source.uri):
        path = _local_path(source.uri)
        if not path.exists():
            raise TaskError(f"{kind} {source.name!r}: {source.uri} does not exist")
    else:
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(source.uri)
        if not fs.exists(paths[0]):
            raise TaskError(f"{kind} {source.name!r}: {source.uri} does not exist")
        path = scratch / f"{kind}-{source.name}"
        if fs.isdir(paths[0]):
            fs.get(paths[0].rstrip("/") + "/", str(path) + "/", recursive=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fs.get(paths[0], str(path))
    if source.digest is not None:
        actual = content_digest(path)
        if actual != source.digest:
            raise TaskError(
                f"{kind} {source.name!r} ({source.uri}) hashes to {actual},"
                f" the task pins {source.digest}"
            )
    return path


def content_digest(path: Path) -> str:
    """What a task pins an input with: a directory's artifact id, a file's ``sha256:`` digest."""
    if path.is_dir():
        from studbook_trainer.operators.simple import directory_id

        return directory_id(path)
    with path.open("rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def run_task(task: Task) -> dict[str, Any]:
    """Run one task to completion; raises on any failure, leaving no output behind."""
    started = time.monotonic()
    operator = get_operator(task.operator)
    local_out = _is_local(task.output)
    final = _local_path(task.output) if local_out else None
    if final is not None and final.exists():
        raise TaskError(f"output {final} already exists; outputs are never overwritten")
    scratch = Path(tempfile.mkdtemp(prefix="studbook-task-"))
    staging_parent = final.parent if final is not None else scratch
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=staging_parent))
    try:
        parents = [LocalParent(p.name, fetch(p, scratch, kind="parent")) for p in task.parents]
        data = {d.name: fetch(d, scratch, kind="dataset") for d in task.data}
        log.info("running %s on %d parent(s) into %s", task.operator, len(parents), task.output)
        ctx = RunContext(parents, staging, data, task.device)
        make_deterministic(getattr(task.plan, "seed", 0))
        report = operator.run(task.plan, ctx)
        # Only inputs and what they produced: where the inputs were and how long it took differ
        # from run to run and would make the same inputs give another artifact id. The config is
        # in the lineage, by its hash, and a founder's carries where it was fetched from.
        summary = {
            "operator": task.operator,
            "parents": [{"name": p.name, "digest": p.digest} for p in task.parents],
            "data": [{"name": d.name, "digest": d.digest} for d in task.data],
            "report": report,
        }
        (staging / REPORT).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if final is not None:
            os.rename(staging, final)
        else:
            import fsspec

            fs, _, paths = fsspec.get_fs_token_paths(task.output)
            fs.put(str(staging) + "/", paths[0].rstrip("/") + "/", recursive=True)
            with fs.open(paths[0].rstrip("/") + "/_COMPLETE", "w") as f:
                f.write("ok\n")
        log.info("done in %.1f s: %s", time.monotonic() - started, task.output)
        return summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
