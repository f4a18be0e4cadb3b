"""The Jobs a Descendant runs: untrusted breeding pods, owned children, stable names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.builders import Body

from studbook.api import Descendant, reasons
from studbook.api.task import IMAGE_ENV
from studbook.breeding.flow import job_name
from studbook.controllers.view import indexed_job
from studbook.k8s.jobs import (
    JobSettings,
    job,
    job_phase,
    pod_stuck,
    step_network_policy,
    suspended,
)

TASK = '{"schemaVersion": "task.studbook.dev/v1", "step": "breed"}'
DEADLINE = 3600
SETTINGS = JobSettings(
    trainer_image="registry.example.com/studbook-trainer:0.1.0",
    artifact_volume={"persistentVolumeClaim": {"claimName": "studbook-artifacts"}},
    store_egress=({"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 9000}]},),
)


def _descendant(**changes: Any) -> Descendant:
    body = Body.of("lora-specialist").set("metadata.uid", "0b7c1a52-6f0e-4c5e-9d1f-3a2b1c0d9e8f")
    for path, value in changes.items():
        body.set(path, value)
    return body.descendant()


def _pod(job_body: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job_body["spec"]["template"]["spec"]
    return pod


def test_breed_pod_is_untrusted() -> None:
    body = job(_descendant(), "breed", 1, SETTINGS, TASK, DEADLINE)
    pod = _pod(body)
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert all("secret" not in v for v in pod["volumes"]), "breed pods never see secrets"
    assert container["command"] == ["python", "-m", "studbook_trainer", "run"]
    assert container["image"] == SETTINGS.trainer_image


def test_breed_pod_gets_the_requested_gpus_and_placement() -> None:
    body = job(_descendant(), "breed", 1, SETTINGS, TASK, DEADLINE)
    pod = _pod(body)
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == "batch-low"
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "breeding"
    assert body["spec"]["suspend"] is True
    assert body["spec"]["backoffLimit"] == 0
    assert body["spec"]["activeDeadlineSeconds"] == DEADLINE


def test_no_job_signs_and_no_step_pod_sees_a_secret() -> None:
    # The operator signs in its own process: the key never enters a tenant namespace.
    with pytest.raises(KeyError):
        job(_descendant(), "sign", 1, SETTINGS, TASK, DEADLINE)
    for step in ("breed", "evaluate"):
        pod = _pod(job(_descendant(), step, 1, SETTINGS, TASK, DEADLINE))
        assert not any("secret" in v or "projected" in v for v in pod["volumes"]), step
        env = pod["containers"][0]["env"]
        assert not any("valueFrom" in e or "SIGNING" in e["name"] for e in env), step


@pytest.mark.parametrize("purpose", ["breed", "evaluate"])
def test_jobs_are_owned_and_carry_their_task(purpose: Any) -> None:
    owner = _descendant()
    child = job(owner, purpose, 2, SETTINGS, TASK, DEADLINE)
    (ref,) = child["metadata"]["ownerReferences"]
    assert ref["kind"] == "Descendant" and ref["uid"] == owner.metadata.uid
    assert ref["controller"] is True
    assert child["metadata"]["name"] == f"minilm-sentiment-{purpose}-2"
    template = child["spec"]["template"]
    assert template["metadata"]["annotations"]["breeding.studbook.dev/task"] == TASK
    (task_volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "task"]
    (item,) = task_volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['breeding.studbook.dev/task']"


def test_names_are_stable_and_fit_a_label() -> None:
    long = "a" * 60
    assert job_name(long, "evaluate", 12) == job_name(long, "evaluate", 12)
    assert job_name(long, "evaluate", 12) != job_name(long, "evaluate", 13)
    assert len(job_name(long, "evaluate", 12)) <= 63
    assert job(_descendant(), "breed", 2, SETTINGS, TASK, DEADLINE)["metadata"]["name"] == job_name(
        "minilm-sentiment", "breed", 2
    )


def test_a_job_runs_once_a_pod_is_ready_not_once_one_exists() -> None:
    def phase(**status: Any) -> str:
        return job_phase({"metadata": {"name": "j"}, "status": status})

    assert phase() == "Pending"
    # The Job controller counts a pod waiting for a GPU as active.
    assert phase(active=1, ready=0, startTime="2026-11-30T12:00:00Z") == "Pending"
    assert phase(active=1, ready=1) == "Running"
    done = {"type": "Complete", "status": "True"}
    assert (
        phase(succeeded=1, conditions=[{"type": "SuccessCriteriaMet", "status": "True"}, done])
        == "Succeeded"
    )
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    assert phase(active=0, failed=1, conditions=[failed]) == "Failed"
    assert phase(conditions=[{**failed, "status": "False"}], active=1, ready=1) == "Running"


def test_network_policy_allows_only_the_store() -> None:
    policy = step_network_policy("ml-breeding", SETTINGS)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"] == list(SETTINGS.store_egress)
    selector = policy["spec"]["podSelector"]
    (expression,) = selector["matchExpressions"]
    assert expression["values"] == ["breed", "evaluate"]
    for step in ("breed", "evaluate"):
        pod = job(_descendant(), step, 1, SETTINGS, TASK, DEADLINE)["spec"]["template"]["metadata"]
        assert selector["matchLabels"].items() <= pod["labels"].items()
        assert pod["labels"][expression["key"]] in expression["values"]


def test_the_job_index_keeps_what_reconciling_reads_and_not_the_pod_template() -> None:
    body = job(_descendant(**{"spec.resources.gpus": 2}), "breed", 1, SETTINGS, TASK, DEADLINE)
    body["metadata"]["uid"] = "job-uid"
    body["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    body["status"] = {"active": 1, "startTime": "2026-11-30T10:00:00Z"}
    kept = indexed_job(body)
    assert kept["metadata"]["labels"] == body["metadata"]["labels"]
    assert (kept["metadata"]["name"], kept["metadata"]["uid"]) == (
        body["metadata"]["name"],
        "job-uid",
    )
    assert kept["status"] == body["status"]
    # Why a Job runs no pod: suspended by a queue, or waiting long since its creation.
    assert kept["spec"]["suspend"] is True and suspended(kept) == suspended(body)
    body["metadata"]["creationTimestamp"] = "2026-11-30T09:59:00Z"
    assert indexed_job(body)["metadata"]["creationTimestamp"] == "2026-11-30T09:59:00Z"
    limits = _pod(kept)["containers"][0]["resources"]["limits"]
    assert (
        limits["nvidia.com/gpu"]
        == _pod(body)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert "managedFields" not in kept["metadata"]
    assert "volumes" not in _pod(kept) and "metadata" not in kept["spec"]["template"]
    assert len(json.dumps(kept)) < len(json.dumps(body)) / 3


def test_why_a_job_runs_no_pod() -> None:
    queued = job(_descendant(), "breed", 1, SETTINGS, TASK, DEADLINE)
    assert suspended(queued) == (
        reasons.JOB_SUSPENDED,
        "suspended until Kueue admits it to queue 'breeding'",
    )
    unschedulable = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 node(s) didn't match selector.",
                }
            ]
        }
    }
    assert pod_stuck(unschedulable) == (
        reasons.UNSCHEDULABLE,
        "0/3 nodes are available: 3 node(s) didn't match selector.",
    )
    unbound = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "message": "0/3 nodes are available: pod has unbound immediate"
                    " PersistentVolumeClaims.",
                }
            ]
        }
    }
    assert pod_stuck(unbound)[0] == reasons.VOLUME_UNBOUND  # type: ignore[index]
    pulling = {
        "status": {
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
            ]
        }
    }
    assert pod_stuck(pulling) == (reasons.IMAGE_PULL_FAILED, "ImagePullBackOff: no such image")
    secret = {
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": 'secret "s3-credentials" not found',
                        }
                    }
                }
            ]
        }
    }
    assert pod_stuck(secret)[0] == reasons.CONTAINER_CONFIG_ERROR  # type: ignore[index]
    creating = {"status": {"containerStatuses": [{"state": {"waiting": {"reason": "Pulling"}}}]}}
    assert pod_stuck(creating) is None and pod_stuck({}) is None


def test_step_pods_are_told_their_image_and_the_lineage_names_its_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from studbook_trainer import __version__
    from studbook_trainer.steps import code_version

    digest = "sha256:" + "0f" * 32
    pinned = JobSettings(trainer_image=f"localhost/studbook-trainer@{digest}", artifact_volume={})
    env = _pod(job(_descendant(), "breed", 1, pinned, TASK, DEADLINE))["containers"][0]["env"]
    (image,) = [e["value"] for e in env if e["name"] == IMAGE_ENV]
    monkeypatch.setenv(IMAGE_ENV, image)
    assert code_version() == f"{__version__}@{digest}"
    # A tag can move, so it names nothing more than the version; nor does a malformed digest.
    for unpinned in (SETTINGS.trainer_image, "trainer@sha256:xyz", f"trainer@{digest}/../x"):
        monkeypatch.setenv(IMAGE_ENV, unpinned)
        assert code_version() == __version__, unpinned
