"""Refusals on the pipeline's paths: a swapped suite dataset refuses the evaluate step, and
``studbook breed`` fails a refused step at once, with the step's reason, instead of retrying."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.builders import Body

from studbook.api.common import Compatibility
from studbook.api.operators import OperatorSpec
from studbook.api.suite import EvaluationSuiteSpec
from studbook.api.task import (
    EXIT_REFUSED,
    TERMINATION_LOG_ENV,
    BreedTask,
    EvaluateTask,
    ParentArtifact,
)
from studbook.artifacts import Store
from studbook.local.steps import seal_output
from studbook_trainer.__main__ import main
from studbook_trainer.evaluation import bytes_digest
from studbook_trainer.operators.simple import directory_id
from studbook_trainer.steps import breed

from . import _fixtures as fx
from .conftest import Data, suite_spec


def test_a_swapped_suite_dataset_refuses_the_evaluate_step_naming_both_digests(
    tmp_path: Path, data: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    imported = BreedTask(
        descendant="ml/base",
        operator=OperatorSpec.model_validate(
            {
                "kind": "import",
                "import": {
                    "uri": str(fx.minilm_dir()),
                    "digest": directory_id(fx.minilm_dir()),
                },
            }
        ),
        compatibility=Compatibility(
            base_family="minilm", architecture="BertModel", tokenizer_id="t"
        ),
        store=str(store_dir),
        output=str(store_dir / "outputs" / "breed"),
    )
    breed(imported)
    founder = seal_output(Store.open(store_dir), imported, imported.output, None)
    spec = suite_spec(data)
    gate = tmp_path / "gate.jsonl"
    shutil.copy(data.files["topic-gate"], gate)
    entry = next(d for d in spec["datasets"] if d["name"] == "topic-gate")
    entry["uri"] = gate.as_uri()
    # Valid JSON Lines of the task, but not the file the suite pins.
    gate.write_text(json.dumps({"text": "a swapped example", "label": 0}) + "\n")
    task = EvaluateTask(
        descendant="ml/base",
        subject=ParentArtifact(
            name="base", artifact_id=founder.artifact.id, uri=founder.artifact.uri
        ),
        suite_name="sentiment-topic",
        suite_digest="sha256:" + "5" * 64,
        suite=EvaluationSuiteSpec.model_validate_json(json.dumps(spec)),
        store=str(store_dir),
        output=str(store_dir / "outputs" / "evaluate"),
    )
    task_file = tmp_path / "evaluate.json"
    task_file.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(termination))

    assert main(["evaluate", "--task", str(task_file)]) == EXIT_REFUSED
    reason = termination.read_text()
    assert (
        f"hashes to {bytes_digest(gate.read_bytes())}, the suite pins {entry['digest']}" in reason
    )
    assert not (store_dir / "outputs" / "evaluate" / "scorecard.json").exists()


def test_local_breed_fails_a_refused_import_at_once(tmp_path: Path, data: Data) -> None:
    source = tmp_path / "founder"
    shutil.copytree(fx.minilm_dir(), source)
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    founder = (
        Body.of("founder-import")
        .set("spec.operator.import.uri", str(source))
        .set("spec.operator.import.digest", directory_id(source))
        .set("spec.resources.backoffLimit", 2)
        .manifest
    )
    governance = [
        Body.of("policy").set("spec.evaluationGates", {}).manifest,
        Body.of("suite").set("spec", suite_spec(data)).manifest,
    ]
    (manifests / "all.yaml").write_text(yaml.safe_dump_all([*governance, founder]))
    workspace = tmp_path / "workspace"
    command = [sys.executable, "-m", "studbook", "breed", str(manifests)]
    run = subprocess.run([*command, "--workspace", str(workspace)], capture_output=True, text=True)

    assert "retrying" not in run.stdout, run.stdout
    status = json.loads((workspace / "registry.json").read_text())["minilm-base"]["status"]
    assert status["phase"] == "Failed", status
    assert status["message"].startswith("breed failed: import of "), status["message"]
    assert "pytorch_model.bin is a pickle" in status["message"]
    assert [(j["attempt"], j["phase"]) for j in status["jobs"]] == [(1, "Failed")]
    assert "Traceback" not in status["jobs"][0]["reason"], "the log keeps the traceback"
    assert Store.open(workspace / "store").ids() == [], "nothing was sealed"
