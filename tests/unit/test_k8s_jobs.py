"""The Jobs a Descendant runs: untrusted breeding pods, owned children, stable names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.builders import Body
from tests.manifests import example

from studbook import __version__
from studbook.api import Descendant, EvaluationSuite, parse_manifest, reasons
from studbook.api.operators import MergeConfig
from studbook.api.run import BreedingRun
from studbook.api.task import (
    BreedTask,
    EvaluateTask,
    ParentArtifact,
    TrialSpec,
    TrialTask,
    code_version,
)
from studbook.breeding.flow import job_name
from studbook.breeding.runs import trial_task
from studbook.breeding.tasks import breed_task, evaluate_task
from studbook.controllers.view import indexed_job
from studbook.k8s import jobs
from studbook.k8s.jobs import (
    OUTPUT_MOUNT,
    JobSettings,
    job_phase,
    pod_stuck,
    step_network_policy,
    suspended,
)

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


def _task(step: str, owner: Descendant | None = None) -> BreedTask | EvaluateTask:
    """The task the operator would give the step, with the parents and data its spec names."""
    owner = owner or _descendant()
    parents = [
        ParentArtifact(name=ref.name, artifact_id="sha256:" + f"{i:02d}" * 32, uri="unused")
        for i, ref in enumerate(owner.spec.parents)
    ]
    if step == "breed":
        return breed_task(owner, parents, "/work", OUTPUT_MOUNT)
    subject = ParentArtifact(name="subject", artifact_id="sha256:" + "ee" * 32, uri="unused")
    suite = parse_manifest(example("suite"))
    assert isinstance(suite, EvaluationSuite)
    return evaluate_task(owner, subject, parents, suite, "/work", OUTPUT_MOUNT)


def job(owner: Descendant, step: Any, attempt: int, settings: JobSettings = SETTINGS) -> Any:
    """The Job of a step, its task the one the operator would give it."""
    return jobs.job(owner, step, attempt, settings, _task(step, owner), DEADLINE)


def _pod(job_body: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job_body["spec"]["template"]["spec"]
    return pod


def test_breed_pod_is_untrusted() -> None:
    body = job(_descendant(), "breed", 1)
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
    body = job(_descendant(), "breed", 1)
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
        job(_descendant(), "sign", 1)
    for step in ("breed", "evaluate"):
        pod = _pod(job(_descendant(), step, 1))
        assert not any("secret" in v or "projected" in v for v in pod["volumes"]), step
        env = pod["containers"][0]["env"]
        # Only the pod's own labels come in by reference: no Secret or ConfigMap key.
        refs = [e["valueFrom"] for e in env if "valueFrom" in e]
        assert all(list(r) == ["fieldRef"] for r in refs), step
        assert not any("SIGNING" in e["name"] for e in env), step


@pytest.mark.parametrize("purpose", ["breed", "evaluate"])
def test_jobs_are_owned_and_carry_their_task(purpose: Any) -> None:
    owner = _descendant()
    child = job(owner, purpose, 2)
    (ref,) = child["metadata"]["ownerReferences"]
    assert ref["kind"] == "Descendant" and ref["uid"] == owner.metadata.uid
    assert ref["controller"] is True
    assert child["metadata"]["name"] == f"minilm-sentiment-{purpose}-2"
    template = child["spec"]["template"]
    task = _task(purpose, owner).model_dump_json(by_alias=True, exclude_none=True)
    assert template["metadata"]["annotations"]["breeding.studbook.dev/task"] == task
    (task_volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "task"]
    (item,) = task_volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['breeding.studbook.dev/task']"


def test_names_are_stable_and_fit_a_label() -> None:
    long = "a" * 60
    assert job_name(long, "evaluate", 12) == job_name(long, "evaluate", 12)
    assert job_name(long, "evaluate", 12) != job_name(long, "evaluate", 13)
    assert len(job_name(long, "evaluate", 12)) <= 63
    assert job(_descendant(), "breed", 2)["metadata"]["name"] == job_name(
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
    assert expression["values"] == ["breed", "evaluate", "trials"]
    for step in ("breed", "evaluate"):
        pod = job(_descendant(), step, 1)["spec"]["template"]["metadata"]
        assert selector["matchLabels"].items() <= pod["labels"].items()
        assert pod["labels"][expression["key"]] in expression["values"]


def test_the_job_index_keeps_what_reconciling_reads_and_not_the_pod_template() -> None:
    body = job(_descendant(**{"spec.resources.gpus": 2}), "breed", 1)
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
    queued = job(_descendant(), "breed", 1)
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


def test_the_lineage_names_the_digest_of_the_image_the_job_was_given() -> None:
    digest = "sha256:" + "0f" * 32
    assert code_version(f"localhost/studbook-trainer@{digest}") == f"{__version__}@{digest}"
    # A tag can move, so it names nothing more than the version; nor does a malformed digest.
    for unpinned in (SETTINGS.trainer_image, "trainer@sha256:xyz", f"trainer@{digest}/../x", None):
        assert code_version(unpinned) == __version__, unpinned


def test_a_step_pod_mounts_its_inputs_read_only_and_only_its_own_output_writable() -> None:
    owner = _descendant(**{"spec.data.0.uri": "/work/inputs/train.jsonl"})
    body = job(owner, "breed", 1)
    container = _pod(body)["containers"][0]
    store = [m for m in container["volumeMounts"] if m["name"] == "artifacts"]
    *inputs, output = store
    parent = "sha256/" + "00" * 32
    assert [(m["subPath"], m["mountPath"]) for m in inputs] == [
        ("inputs/train.jsonl", "/work/inputs/train.jsonl"),
        (parent, f"/work/{parent}"),
    ]
    assert all(m["readOnly"] is True for m in inputs)
    # Writable: only outputs/<the Job's uid>, from the label the API server gives its pods.
    assert output == {
        "name": "artifacts",
        "mountPath": OUTPUT_MOUNT,
        "subPathExpr": "outputs/$(STUDBOOK_JOB_UID)",
    }
    (uid,) = [e for e in container["env"] if e["name"] == "STUDBOOK_JOB_UID"]
    field = uid["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['batch.kubernetes.io/controller-uid']"
    assert not any(m["mountPath"] == "/work" for m in container["volumeMounts"])


def test_evaluation_mounts_its_subject_and_the_suite_data_in_the_store() -> None:
    evaluate = job(_descendant(), "evaluate", 1)
    paths = [m.get("subPath") for m in _pod(evaluate)["containers"][0]["volumeMounts"]]
    assert "sha256/" + "ee" * 32 in paths


@pytest.mark.parametrize(
    "uri",
    ["/elsewhere/x.jsonl", "s3://bucket/x.jsonl", "/work/../etc/passwd", "/work", "relative.jsonl"],
)
def test_data_outside_the_store_is_not_mounted(uri: str) -> None:
    body = job(_descendant(**{"spec.data.0.uri": uri}), "breed", 1)
    mounts = _pod(body)["containers"][0]["volumeMounts"]
    assert [m.get("subPath") for m in mounts if m["name"] == "artifacts"] == [
        "sha256/" + "00" * 32,
        None,
    ]


def test_a_job_writes_only_to_its_output_mount() -> None:
    task = _task("breed").model_copy(update={"output": "/work/elsewhere"})
    with pytest.raises(ValueError, match="/output"):
        jobs.job(_descendant(), "breed", 1, SETTINGS, task, DEADLINE)


def test_step_containers_fall_back_to_their_log_when_they_wrote_no_reason() -> None:
    for step in ("breed", "evaluate"):
        (container,) = _pod(job(_descendant(), step, 1))["containers"]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def _run(**changes: Any) -> BreedingRun:
    body = Body.of("breeding-run").set("metadata.uid", "5d1c0b7a-2f3e-4d5c-8b9a-1e2f3a4b5c6d")
    for path, value in changes.items():
        body.set(path, value)
    return body.run()


def _trial_task(run: BreedingRun, numbers: range) -> TrialTask:
    suite = parse_manifest(example("suite"))
    assert isinstance(suite, EvaluationSuite)
    parents = [
        ParentArtifact(name=p.name, artifact_id="sha256:" + f"{i:02d}" * 32, uri="unused")
        for i, p in enumerate(run.spec.parent_pool)
    ]
    merge = MergeConfig.model_validate({"method": "linear", "weights": []})
    trials = [TrialSpec(number=n, merge=merge) for n in numbers]
    return trial_task(run, suite, parents, "/work", OUTPUT_MOUNT, trials)


def test_a_trial_job_is_a_step_job_of_its_run_named_and_labelled_for_its_trials() -> None:
    queued = {"queueName": "team-a", "gpus": 1, "cpu": "2", "memory": "4Gi"}
    run = _run(**{"spec.template.resources": queued})
    body = jobs.trial_job(run, SETTINGS, _trial_task(run, range(4, 7)), DEADLINE)
    assert body["metadata"]["name"] == "sentiment-topic-search-trials-4-6"
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == (
        "BreedingRun",
        "sentiment-topic-search",
        True,
    )
    labels = body["metadata"]["labels"]
    assert labels["breeding.studbook.dev/run"] == "sentiment-topic-search"
    assert (labels[jobs.LABEL_FIRST_TRIAL], labels[jobs.LABEL_LAST_TRIAL]) == ("4", "6")
    assert labels[jobs.LABEL_PURPOSE] == "trials" and jobs.LABEL_DESCENDANT not in labels
    assert labels[jobs.LABEL_QUEUE] == "team-a" and body["spec"]["suspend"] is True
    pod = _pod(body)
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "studbook_trainer", "trials"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[OUTPUT_MOUNT]["subPathExpr"] == "outputs/$(STUDBOOK_JOB_UID)"
    read_only = sorted(m["subPath"] for m in mounts.values() if m.get("subPath"))
    assert all(mounts[f"/work/{p}"]["readOnly"] for p in read_only)
    assert len([p for p in read_only if p.startswith("sha256/")]) == 3
    task = json.loads(body["spec"]["template"]["metadata"]["annotations"][jobs.ANNOTATION_TASK])
    assert [t["number"] for t in task["trials"]] == [4, 5, 6]
    assert all(d["role"] == "optimize" for d in task["datasets"])


def test_a_trial_job_runs_consecutive_trials_only() -> None:
    run = _run()
    task = _trial_task(run, range(4, 7))
    gap = task.model_copy(update={"trials": [task.trials[0], task.trials[2]]})
    with pytest.raises(ValueError, match="consecutive"):
        jobs.trial_job(run, SETTINGS, gap, DEADLINE)
