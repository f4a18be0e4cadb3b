"""``studbook breed`` on a directory: founder and a pruned child, bred, evaluated, signed; a
second run reuses both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tests.builders import Body

from studbook_trainer.operators.simple import directory_id

from .conftest import Data, Models, suite_spec


def _write(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def _family(manifests: Path, models: Models, data: Data) -> None:
    """A founder and a pruned child, with their policy and suite, written to ``manifests``."""
    manifests.mkdir()
    suite = Body.of("suite").set("spec", suite_spec(data)).manifest
    policy = Body.of("policy").set("spec.evaluationGates", {}).manifest
    founder = (
        Body.of("founder-import")
        .set("spec.operator.import.uri", str(models.sentiment))
        .set("spec.operator.import.digest", directory_id(models.sentiment))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .manifest
    )
    pruned = (
        Body.of("quantization")
        .set("metadata.name", "minilm-pruned")
        .set("spec.parents", [{"name": "minilm-base"}])
        .set(
            "spec.operator",
            {"kind": "prune", "prune": {"method": "magnitude", "targetSparsity": 0.3}},
        )
        .set("spec.data", [])
        .set("spec.compatibility.quantization", "none")
        .manifest
    )
    _write(manifests / "governance.yaml", policy, suite)
    _write(manifests / "models.yaml", pruned, founder)


def test_breed_a_directory_then_reuse_it(tmp_path: Path, models: Models, data: Data) -> None:
    manifests = tmp_path / "manifests"
    _family(manifests, models, data)
    workspace = tmp_path / "workspace"
    command = [
        sys.executable,
        "-m",
        "studbook",
        "breed",
        str(manifests),
        "--workspace",
        str(workspace),
    ]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "minilm-pruned" in first.stdout and "Ready" in first.stdout
    registry = yaml.safe_load((workspace / "registry.json").read_text())
    child = registry["minilm-pruned"]["status"]
    assert child["stage"] == "candidate" and child["artifact"]["signer"].startswith("key:")
    assert child["lineage"]["parentIds"] == [registry["minilm-base"]["status"]["artifact"]["id"]]
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("reused") == 2, second.stdout


def test_ctrl_c_mid_step_then_a_rerun_carries_on(
    tmp_path: Path, models: Models, data: Data
) -> None:
    manifests = tmp_path / "manifests"
    _family(manifests, models, data)
    workspace = tmp_path / "workspace"
    command = [sys.executable, "-m", "studbook", "breed", str(manifests)]
    command += ["--workspace", str(workspace)]
    # Its own session, so the interrupt reaches every process of the run, as a terminal's does.
    run = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert run.stdout is not None
    seen = []
    for line in run.stdout:
        seen.append(line)
        if line.startswith("minilm-pruned breed"):
            time.sleep(2)  # inside the step
            os.killpg(run.pid, signal.SIGINT)
            break
    rest = run.stdout.read()
    assert run.wait(60) == 130, "".join(seen) + rest
    assert "interrupted: 1 of 2 done and recorded" in rest, rest
    registry = json.loads((workspace / "registry.json").read_text())
    assert set(registry) == {"minilm-base"}, "nothing half-done is recorded"

    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "minilm-base reused" in second.stdout
    registry = json.loads((workspace / "registry.json").read_text())
    assert registry["minilm-pruned"]["status"]["phase"] == "Ready"
