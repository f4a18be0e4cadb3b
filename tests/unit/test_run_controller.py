"""What the BreedingRun controller reads of a trial Job: its own output, untrusted, bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from kubernetes import client

from studbook.api.task import TrialResult
from studbook.breeding.runflow import TrialJob
from studbook.controllers.descendants import Controller
from studbook.controllers.runs import RunController, finished
from studbook.controllers.settings import OperatorSettings
from studbook.k8s.jobs import JobSettings

UID = "4f1d2c3b-0a9e-4d8c-9b7a-6e5f4d3c2b1a"


def _controller(store: Path) -> RunController:
    settings = OperatorSettings(
        store=str(store), jobs=JobSettings(trainer_image="t", artifact_volume={})
    )
    descendants = Controller(
        api=cast(client.ApiClient, None), settings=settings, post_event=lambda *_: None
    )
    return RunController(descendants=descendants, post_event=lambda *_: None)


def _job(gpus: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "r-trials-3-4", "uid": UID, "labels": {}},
        "spec": {
            "template": {
                "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
            }
        },
        "status": {
            "startTime": "2026-12-06T05:00:00+00:00",
            "completionTime": "2026-12-06T05:01:40+00:00",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }


def _line(number: int) -> str:
    result = TrialResult(number=number, metrics={"s-optimize/accuracy": 0.5})
    return result.model_dump_json(by_alias=True) + "\n"


def test_results_come_from_the_jobs_own_output_with_its_gpu_seconds(tmp_path: Path) -> None:
    output = tmp_path / "outputs" / UID
    output.mkdir(parents=True)
    (output / "trials.jsonl").write_text(_line(3) + _line(4) + _line(7))
    observed = _controller(tmp_path)._trial_job(
        "ns", TrialJob("r-trials-3-4", 3, 4, "Succeeded"), _job(), {3, 4}
    )
    assert sorted(observed.results or {}) == [3, 4]
    assert (observed.seconds, observed.gpu_seconds) == (100.0, 200.0)


def test_a_linked_results_file_is_refused_not_followed(tmp_path: Path) -> None:
    output = tmp_path / "outputs" / UID
    output.mkdir(parents=True)
    secret = tmp_path / "elsewhere.jsonl"
    secret.write_text(_line(3))
    (output / "trials.jsonl").symlink_to(secret)
    observed = _controller(tmp_path)._trial_job(
        "ns", TrialJob("r-trials-3-4", 3, 4, "Succeeded"), _job(), {3}
    )
    assert observed.results is None and "cannot be opened as a plain file" in (
        observed.refused or ""
    )


def test_a_job_whose_trials_were_all_told_is_not_read_again(tmp_path: Path) -> None:
    job = TrialJob("r-trials-3-4", 3, 4, "Succeeded")
    assert _controller(tmp_path)._trial_job("ns", job, _job(), {5, 6}) is job


def test_a_run_is_finished_once_stopped_signed_and_its_front_made() -> None:
    status: dict[str, Any] = {
        "phase": "Succeeded",
        "observedGeneration": 2,
        "ledgerUri": "/store/ledger.json",
        "conditions": [{"type": "Signed", "status": "True"}],
        "paretoFront": [{"trial": 1, "descendant": "r-t1"}],
    }
    body = {"metadata": {"generation": 2}, "status": status}
    assert finished(body)
    assert not finished({**body, "metadata": {"generation": 3}}), "its budget was edited"
    unsigned = {**status, "conditions": [{"type": "Signed", "status": "False"}]}
    assert not finished({**body, "status": unsigned})
    unmade = {**status, "paretoFront": [{"trial": 1}]}
    assert not finished({**body, "status": unmade})
    refused = {"phase": "Failed", "observedGeneration": 2}
    assert finished({**body, "status": refused})
