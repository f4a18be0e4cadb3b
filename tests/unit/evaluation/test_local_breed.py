"""``studbook breed`` on a directory: founder and a pruned child, bred, evaluated, signed; a
second run reuses both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests.builders import Body

from studbook_trainer.operators.simple import directory_id

from .conftest import Data, Models, suite_spec


def _write(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def test_breed_a_directory_then_reuse_it(tmp_path: Path, models: Models, data: Data) -> None:
    manifests = tmp_path / "manifests"
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
