"""``studbook breed`` on a directory: founder and a pruned child, bred, evaluated, signed; a
second run reuses both, unless admission now refuses them."""

from __future__ import annotations

import errno
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

from studbook_trainer.evaluation import bytes_digest
from studbook_trainer.operators.simple import directory_id

from . import _fixtures as fx
from .conftest import Data, Models, suite_spec


def _write(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def _founder(models: Models, license: str = "Apache-2.0") -> dict[str, Any]:
    return (
        Body.of("founder-import")
        .set("spec.operator.import.uri", str(models.sentiment))
        .set("spec.operator.import.digest", directory_id(models.sentiment))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .set("spec.license", license)
        .manifest
    )


def _governance(manifests: Path, data: Data) -> None:
    manifests.mkdir()
    suite = Body.of("suite").set("spec", suite_spec(data)).manifest
    policy = Body.of("policy").set("spec.evaluationGates", {}).manifest
    _write(manifests / "governance.yaml", policy, suite)


def _family(manifests: Path, models: Models, data: Data) -> None:
    """A founder and a pruned child, with their policy and suite, written to ``manifests``."""
    _governance(manifests, data)
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
    _write(manifests / "models.yaml", pruned, _founder(models))


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
    # The status carries the fitness (the Fitness column): the stored scorecard's objective.
    card = json.loads(Path(child["scorecard"]["uri"]).read_text())
    assert child["scorecard"]["fitness"] == card["objective"]["value"]
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("reused") == 2, second.stdout


def test_a_reused_founder_must_still_pass_admission(
    tmp_path: Path, models: Models, data: Data
) -> None:
    manifests = tmp_path / "manifests"
    _governance(manifests, data)
    _write(manifests / "founder.yaml", _founder(models))
    command = [sys.executable, "-m", "studbook", "breed", str(manifests)]
    command += ["--workspace", str(tmp_path / "workspace")]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    # Bred and Ready; then its licence changes to one the policy does not allow.
    _write(manifests / "founder.yaml", _founder(models, license="Proprietary"))
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode != 0, second.stdout + second.stderr
    assert "minilm-base reused" not in second.stdout
    assert "spec.license: LicenseConflict: licence Proprietary" in second.stdout
    registry = json.loads((tmp_path / "workspace" / "registry.json").read_text())
    status = registry["minilm-base"]["status"]
    assert status["phase"] == "Rejected" and "licence Proprietary" in status["message"]


def _tuned(reviews: Path, digest: str) -> dict[str, Any]:
    """A LoRA child of the founder, trained on ``reviews``."""
    lora = {
        "task": "sequence-classification",
        "numLabels": len(fx.LABELS),
        "datasets": ["reviews"],
        "rank": 4,
        "alpha": 8,
        "targetModules": ["query", "value"],
        "steps": 2,
        "learningRate": 0.0005,
        "batchSize": 4,
        "maxSeqLength": 32,
        "mergeIntoBase": True,
        "seed": 1,
    }
    review = {"name": "reviews", "uri": str(reviews), "digest": digest, "role": "train"}
    return (
        Body.of("lora-specialist")
        .set("metadata.name", "minilm-tuned")
        .set("spec.operator.lora", lora)
        .set("spec.data", [review])
        .set("spec.resources", {})
        .manifest
    )


def _reader_waiting(fifo: Path) -> int | None:
    """A write end of ``fifo`` once a reader holds it open (else ``None``); never blocks."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:  # no reader yet
            return None
        raise


def test_ctrl_c_mid_step_then_a_rerun_carries_on(
    tmp_path: Path, models: Models, data: Data
) -> None:
    manifests = tmp_path / "manifests"
    _governance(manifests, data)
    # The child trains on a FIFO: its breed step blocks reading it, holding it open, so the
    # interrupt provably lands inside a running step however fast or loaded the machine is.
    reviews = tmp_path / "reviews.jsonl"
    os.mkfifo(reviews)
    rows = [
        {"text": r["text"], "label": fx.LABELS.index(r["label"])} for r in data.train["sentiment"]
    ]
    content = "".join(json.dumps(r) + "\n" for r in rows[:16]).encode()
    _write(manifests / "models.yaml", _founder(models), _tuned(reviews, bytes_digest(content)))
    workspace = tmp_path / "workspace"
    command = [sys.executable, "-m", "studbook", "breed", str(manifests)]
    command += ["--workspace", str(workspace)]
    # Its own session, so the interrupt reaches every process of the run, as a terminal's does.
    run = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert run.stdout is not None
    try:
        deadline = time.monotonic() + 600
        while (writer := _reader_waiting(reviews)) is None:
            assert run.poll() is None, run.stdout.read()
            assert time.monotonic() < deadline, "the step never opened its data"
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGINT)
        rest = run.stdout.read()
        assert run.wait(60) == 130, rest
        os.close(writer)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert "minilm-tuned breed" in rest
    assert "interrupted: 1 of 2 done and recorded" in rest, rest
    registry = json.loads((workspace / "registry.json").read_text())
    assert set(registry) == {"minilm-base"}, "nothing half-done is recorded"

    reviews.unlink()
    reviews.write_bytes(content)
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "minilm-base reused" in second.stdout
    registry = json.loads((workspace / "registry.json").read_text())
    assert registry["minilm-tuned"]["status"]["phase"] == "Ready"
