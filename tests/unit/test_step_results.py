"""The trusted half of the pipeline takes a step's output only from that step's own directory.

A breed step's model is sealed here, with the lineage its task gives; an evaluate step's scorecard
is read from its own output, checked and gated here. Whatever else a step leaves is refused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.builders import Body
from tests.unit.test_gates import scorecard

from studbook.api.policy import EvaluationGates
from studbook.api.task import (
    BreedResultFile,
    BreedTask,
    SignResultFile,
    code_version,
    output_uri,
    record_uri,
)
from studbook.artifacts import Store
from studbook.artifacts.results import write_result
from studbook.breeding.flow import JobObservation
from studbook.breeding.tasks import breed_task
from studbook.local.steps import StepResults, seal_output, step_results

GATES = EvaluationGates(min_metrics={"sentiment-gate/accuracy": 0.8})
PINNED = "registry.example.com/trainer@sha256:" + "ab" * 32


def _job(step: str, uid: str, attempt: int = 1) -> JobObservation:
    return JobObservation(step, attempt, f"d-{step}-{attempt}", "Succeeded", uid=uid)  # type: ignore[arg-type]


def _task(store: Path) -> BreedTask:
    return breed_task(Body.of("founder-import").descendant(), [], str(store), "/output")


def _model(output: str) -> Path:
    model = Path(output) / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "config.json").write_text('{"architectures": ["BertModel"]}')
    return model


class Pipeline:
    """One descendant's steps in a store, as the operator or ``studbook breed`` sees them."""

    def __init__(self, tmp_path: Path, uid: str = "5f0c") -> None:
        self.root = tmp_path / "store"
        self.store = Store.open(self.root)
        self.uid = uid
        self.task = _task(self.root)
        self.sealed: list[str] = []

    def records(self, step: str, attempt: int) -> str:
        return record_uri(str(self.root), "ns", "d", self.uid, step, attempt)

    def seal(self, job: JobObservation, output: str) -> BreedResultFile:
        self.sealed.append(output)
        return seal_output(self.store, self.task, output, PINNED)

    def results(self, *jobs: JobObservation) -> StepResults:
        observed = {(j.step, j.attempt): j for j in jobs}
        return step_results(str(self.root), self.records, observed, GATES, self.seal)  # type: ignore[arg-type]

    def output(self, uid: str) -> str:
        return output_uri(str(self.root), uid)


def test_a_breed_output_is_sealed_once_with_the_lineage_of_its_task(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    model = _model(pipeline.output("job-1"))
    # What the step says of itself is not read: a lineage it wrote is refused, not taken.
    first = pipeline.results(_job("breed", "job-1"))
    assert first.breed is not None
    lineage = pipeline.store.lineage(first.breed.artifact.id)
    assert lineage.code_version == code_version(PINNED) and lineage.operator == "import"
    assert first.breed.lineage.config_hash == lineage.config_hash
    assert not model.exists(), "the sealed copy is the one that counts"
    again = pipeline.results(_job("breed", "job-1"))
    assert again.breed == first.breed and len(pipeline.sealed) == 1, "the record is read back"


def test_a_step_that_writes_its_own_lineage_is_refused(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    model = _model(pipeline.output("job-1"))
    (model / "lineage.json").write_text('{"operator": "import"}')
    results = pipeline.results(_job("breed", "job-1"))
    assert results.breed is None
    job = results.jobs[("breed", 1)]
    assert job.refused and "already holds lineage.json" in str(job.reason)


@pytest.mark.parametrize("where", ["model", "inside"])
def test_a_link_in_a_breed_output_is_refused_and_nothing_is_sealed(
    tmp_path: Path, where: str
) -> None:
    pipeline = Pipeline(tmp_path)
    key = tmp_path / "signing" / "key.pem"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY-----")
    output = Path(pipeline.output("job-1"))
    if where == "model":
        real = _model(str(tmp_path / "elsewhere"))
        output.mkdir(parents=True)
        (output / "model").symlink_to(real, target_is_directory=True)
    else:
        (_model(str(output)) / "tokenizer.json").symlink_to(key)
    results = pipeline.results(_job("breed", "job-1"))
    assert results.breed is None and pipeline.store.ids() == []
    job = results.jobs[("breed", 1)]
    assert job.phase == "Failed" and job.refused
    assert "its output was refused" in str(job.reason) and "BEGIN" not in str(job.reason)
    assert not Path(pipeline.records("breed", 1)).exists()


def test_a_breed_job_that_left_no_model_has_no_result(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    results = pipeline.results(_job("breed", "job-1"))
    assert results.breed is None and results.jobs[("breed", 1)].phase == "Succeeded"


def _card(path: Path, accuracy: float, subject: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = [{"dataset": "sentiment-gate", "metric": "accuracy", "value": accuracy, "n": 500}]
    card = scorecard(metrics=metrics).model_copy(update={"subject": subject})
    path.write_text(card.model_dump_json(by_alias=True))


def _bred(pipeline: Pipeline) -> str:
    _model(pipeline.output("job-1"))
    breed = pipeline.results(_job("breed", "job-1")).breed
    assert breed is not None
    return breed.artifact.id


def test_a_scorecard_is_read_from_the_evaluate_jobs_own_output_and_gated(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    artifact = _bred(pipeline)
    own = Path(pipeline.output("job-2")) / "scorecard.json"
    _card(own, 0.5, artifact)
    # A passing card of the same subject, left in another Job's output, is not looked at.
    _card(Path(pipeline.output("job-3")) / "scorecard.json", 0.99, artifact)
    results = pipeline.results(_job("breed", "job-1"), _job("evaluate", "job-2"))
    assert results.evaluate is not None
    assert any("sentiment-gate/accuracy" in r for r in results.evaluate.gate_reasons)
    assert results.evaluate.scorecard.metrics == {"sentiment-gate/accuracy": 0.5}
    assert results.evaluate.scorecard.uri == str(own)


def test_a_scorecard_of_another_artifact_is_refused(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    _bred(pipeline)
    _card(Path(pipeline.output("job-2")) / "scorecard.json", 0.99, "sha256:" + "cd" * 32)
    results = pipeline.results(_job("breed", "job-1"), _job("evaluate", "job-2"))
    assert results.evaluate is None
    job = results.jobs[("evaluate", 1)]
    assert job.refused and "not the artifact" in str(job.reason)


@pytest.mark.parametrize("kind", ["link", "pipe", "huge"])
def test_a_scorecard_that_is_not_a_plain_bounded_file_is_not_read(
    tmp_path: Path, kind: str
) -> None:
    pipeline = Pipeline(tmp_path)
    artifact = _bred(pipeline)
    card = Path(pipeline.output("job-2")) / "scorecard.json"
    card.parent.mkdir(parents=True)
    if kind == "link":
        passing = tmp_path / "passing.json"
        _card(passing, 0.99, artifact)
        card.symlink_to(passing)
    elif kind == "pipe":
        os.mkfifo(card)  # a reader that opened it would wait for a writer forever
    else:
        card.write_bytes(b" " * (16 * 2**20 + 1))
    began = time.monotonic()
    results = pipeline.results(_job("breed", "job-1"), _job("evaluate", "job-2"))
    assert time.monotonic() - began < 30
    assert results.evaluate is None
    assert results.jobs[("evaluate", 1)].refused


def test_records_belong_to_one_descendant_not_to_its_name(tmp_path: Path) -> None:
    # A descendant deleted and created again under its name gets a new uid: the sign record of
    # the one before is not taken as its own.
    before = Pipeline(tmp_path, uid="old")
    signed = SignResultFile(signature_uri="s", scorecard_signature_uri="c", signer="key:x")
    write_result(before.records("sign", 1), signed)
    sign = JobObservation("sign", 1, "d-sign-1", "Succeeded")
    assert before.results(sign).sign is not None
    assert Pipeline(tmp_path, uid="new").results(sign).sign is None


def test_an_output_is_named_by_a_run_id_only() -> None:
    assert output_uri("/store/", "6c1e-44") == "/store/outputs/6c1e-44"
    for bad in ("../x", "a/b", "", "A" * 3, "x" * 64):
        with pytest.raises(ValueError, match="not a run id"):
            output_uri("/store", bad)
