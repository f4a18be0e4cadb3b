"""Builders of the Kubernetes objects Studbook runs: step Jobs, trial Jobs, their NetworkPolicy.

A Descendant runs step Jobs (breed, evaluate); a BreedingRun runs trial Jobs.

Step pods are untrusted: they run as non-root on a read-only root filesystem, get no
service-account token, and a NetworkPolicy lets them reach nothing but the artifact store. Of the
store's volume a step pod mounts only its inputs, read-only (the packages and data files its task
names), and its own output directory, ``outputs/<its Job's uid>``, by ``subPathExpr`` from the
uid the API server put in its labels: it can write nothing else, and what is found there was
written by that Job. The operator seals and signs in its own process, so no pod of a tenant
namespace sees signing material. Every Job is owned by its Descendant or BreedingRun, so
deleting the owner removes its Jobs (never the sealed artifacts or the ledger, which live in the
store).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from studbook import GROUP
from studbook.api import reasons
from studbook.api.common import Resources
from studbook.api.descendant import Descendant, JobPhase, Step
from studbook.api.policy import LABEL_GPU_PRODUCT
from studbook.api.run import BreedingRun
from studbook.api.task import BreedTask, EvaluateTask, ParentArtifact, TrialTask
from studbook.artifacts.store import package_dir
from studbook.breeding.flow import job_name
from studbook.breeding.runflow import trial_job_name
from studbook.breeding.runs import RUN_LABEL

Body = dict[str, Any]

LABEL_DESCENDANT = f"{GROUP}/descendant"
LABEL_PURPOSE = f"{GROUP}/purpose"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_FIRST_TRIAL = f"{GROUP}/first-trial"
"""On a trial Job: the first trial it runs."""
LABEL_LAST_TRIAL = f"{GROUP}/last-trial"
"""On a trial Job: the last trial it runs; it runs every trial from the first to this one."""
TRIALS = "trials"
"""The purpose of a BreedingRun's trial Jobs."""
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_TASK = f"{GROUP}/task"
STEP_POLICY = "studbook-steps"
TASK_MOUNT = "/etc/studbook/task"
OUTPUT_MOUNT = "/output"
"""Where a step pod sees its own output directory; the task names it as ``output``."""
LABEL_JOB_UID = "batch.kubernetes.io/controller-uid"
"""The label the API server gives a Job's pods: the Job's uid."""
JOB_UID_ENV = "STUDBOOK_JOB_UID"
NON_ROOT_UID = 65532

COMMANDS: dict[str, tuple[str, ...]] = {
    "breed": ("python", "-m", "studbook_trainer", "run"),
    "evaluate": ("python", "-m", "studbook_trainer", "evaluate"),
    TRIALS: ("python", "-m", "studbook_trainer", "trials"),
}
"""What each step's container runs; the task file follows as ``--task``. The sign step runs in
the operator, so the signing material never enters a tenant namespace."""


@dataclass(frozen=True)
class JobSettings:
    """Operator-wide settings of the Jobs it creates."""

    trainer_image: str
    """The trainer image that breed and evaluate Jobs run."""
    artifact_volume: Body
    """The volume the artifact store is mounted from (a PVC, or any volume source)."""
    store_egress: tuple[Body, ...] = ()
    """NetworkPolicy egress rules that reach the artifact store; nothing else is reachable."""
    store_mount: str = "/work"
    """Where the artifact store volume is mounted in every Job's pod."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of the trainer image."""
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    """Environment given to every container."""


def job_phase(job: Body) -> JobPhase:
    """Where a Job is: finished by its conditions, Running once a pod of it is ready.

    Pending covers everything before, including a pod that exists but waits for a GPU or an
    image: ``status.active`` counts those pods too, so it would call a queued Job running.
    """
    status = job.get("status") or {}
    done = {c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in done:
        return "Succeeded"
    if "Failed" in done:
        return "Failed"
    return "Running" if status.get("ready") else "Pending"


WAITING_REASONS = {
    "ErrImagePull": reasons.IMAGE_PULL_FAILED,
    "ImagePullBackOff": reasons.IMAGE_PULL_FAILED,
    "ErrImageNeverPull": reasons.IMAGE_PULL_FAILED,
    "InvalidImageName": reasons.IMAGE_PULL_FAILED,
    "CreateContainerConfigError": reasons.CONTAINER_CONFIG_ERROR,
    "CreateContainerError": reasons.CONTAINER_CONFIG_ERROR,
}
"""Waiting containers that will not start by themselves, by the reason the kubelet gives."""


def suspended(job: Body) -> tuple[str, str] | None:
    """Why a suspended Job runs no pod: a queue has not admitted it yet."""
    if not (job.get("spec") or {}).get("suspend"):
        return None
    queue = (job["metadata"].get("labels") or {}).get(LABEL_QUEUE)
    if queue is None:
        return reasons.JOB_SUSPENDED, "the Job is suspended"
    return reasons.JOB_SUSPENDED, f"suspended until Kueue admits it to queue {queue!r}"


def pod_stuck(pod: Body) -> tuple[str, str] | None:
    """Why a pod of a Job does not run, as the scheduler or the kubelet says, or ``None``.

    A pod the scheduler cannot place (with its reason, an unbound volume among them), or a
    container that cannot start: an image that cannot be pulled, a missing Secret or ConfigMap.
    """
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            why = str(condition.get("message") or condition.get("reason") or "not scheduled")
            unbound = "unbound" in why and "PersistentVolumeClaim" in why
            return (reasons.VOLUME_UNBOUND if unbound else reasons.UNSCHEDULABLE), why[:512]
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = WAITING_REASONS.get(str(waiting.get("reason")))
        if reason is not None:
            why = f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
            return reason, why[:512]
    return None


def owner_reference(owner: Descendant | BreedingRun) -> Body:
    """The owner reference that ties a child to its Descendant or BreedingRun (for GC)."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(purpose: str, resources: Resources, **own: str) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/managed-by": "studbook",
        "app.kubernetes.io/component": purpose,
        **own,
        LABEL_PURPOSE: purpose,
    }
    if resources.queue_name:
        labels[LABEL_QUEUE] = resources.queue_name
    return labels


def _resources(spec: Resources) -> Body:
    amounts: dict[str, str] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.ephemeral_storage:
        amounts["ephemeral-storage"] = spec.ephemeral_storage
    if spec.gpus:
        amounts["nvidia.com/gpu"] = str(spec.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


_MOUNTABLE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def _in_store(uri: str, store_mount: str) -> str | None:
    """A data URI's path inside the store's volume, if it is a local path under its mount."""
    path = uri.removeprefix("file://")
    if "://" in path or not path.startswith("/"):
        return None
    relative = posixpath.relpath(posixpath.normpath(path), store_mount)
    if relative.startswith("..") or relative == "." or not _MOUNTABLE.fullmatch(relative):
        return None
    return relative


Task = BreedTask | EvaluateTask | TrialTask
"""A task a Job runs."""


def inputs(task: Task, store_mount: str) -> list[str]:
    """What of the store a step reads, as paths inside its volume: packages and data.

    Its packages (parents, and for evaluation the subject and the champion) and the data its
    task names that lies in the store: each dataset and suite dataset (for trials, the
    ``optimize`` datasets only), and a founder's import source. Sorted, so an enclosing
    directory is mounted before what it holds.
    """
    packages: list[ParentArtifact] = list(task.parents)
    uris: list[str] = []
    if isinstance(task, BreedTask):
        uris += [d.uri for d in task.data]
        if task.operator.import_ is not None:
            uris.append(task.operator.import_.uri)
    elif isinstance(task, TrialTask):
        uris += [d.uri for d in task.datasets]
    else:
        packages.append(task.subject)
        if task.champion is not None:
            packages.append(task.champion)
        uris += [d.uri for d in task.suite.datasets]
    found = {package_dir(p.artifact_id) for p in packages}
    found |= {rel for uri in uris if (rel := _in_store(uri, store_mount)) is not None}
    return sorted(found)


def job(
    owner: Descendant,
    purpose: Step,
    attempt: int,
    settings: JobSettings,
    task: BreedTask | EvaluateTask,
    deadline_seconds: int,
) -> Body:
    """The Job that runs one step (breed or evaluate) of a descendant.

    The task travels in the pod's annotation and reaches the container as a file through the
    downward API: one object per step, nothing to clean up beside it. Its output must be
    :data:`OUTPUT_MOUNT`. Kubernetes ends the attempt after ``deadline_seconds`` (see
    ``breeding.admission.job_deadline``).
    """
    labels = _labels(
        purpose,
        owner.spec.resources,
        **{LABEL_DESCENDANT: owner.metadata.name, LABEL_ATTEMPT: str(attempt)},
    )
    return _step_job(
        job_name(owner.metadata.name, purpose, attempt),
        owner,
        labels,
        owner.spec.resources,
        settings,
        task,
        deadline_seconds,
    )


def trial_job(
    run: BreedingRun, settings: JobSettings, task: TrialTask, deadline_seconds: int
) -> Body:
    """The Job that merges and scores a batch of a run's trials (consecutive numbers).

    Built as a step Job is (the same isolation, mounts and queueing), with the run's
    ``template.resources``; named for its trials (:func:`~studbook.breeding.runflow.trial_job_name`)
    and labelled with the first and the last, so the run knows which trials it runs.
    """
    numbers = [t.number for t in task.trials]
    if not numbers or numbers != list(range(numbers[0], numbers[-1] + 1)):
        raise ValueError(f"a trial Job runs consecutive trials, not {numbers}")
    resources = run.spec.template.resources
    labels = _labels(
        TRIALS,
        resources,
        **{
            RUN_LABEL: run.metadata.name,
            LABEL_FIRST_TRIAL: str(numbers[0]),
            LABEL_LAST_TRIAL: str(numbers[-1]),
        },
    )
    name = trial_job_name(run.metadata.name, numbers[0], numbers[-1])
    return _step_job(name, run, labels, resources, settings, task, deadline_seconds)


def _step_job(
    name: str,
    owner: Descendant | BreedingRun,
    labels: dict[str, str],
    resources: Resources,
    settings: JobSettings,
    task: Task,
    deadline_seconds: int,
) -> Body:
    purpose = labels[LABEL_PURPOSE]
    if task.output != OUTPUT_MOUNT:
        raise ValueError(f"a Job's task writes to {OUTPUT_MOUNT}, not {task.output}")
    node_selector = dict(resources.node_selector or {})
    if resources.gpu_type:
        node_selector[LABEL_GPU_PRODUCT] = resources.gpu_type
    volumes: list[Body] = [
        {
            "name": "task",
            "downwardAPI": {
                "items": [
                    {
                        "path": "task.json",
                        "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_TASK}']"},
                    }
                ]
            },
        },
        {"name": "scratch", "emptyDir": {}},
        {"name": "artifacts", **settings.artifact_volume},
    ]
    store = settings.store_mount.rstrip("/")
    mounts: list[Body] = [
        {"name": "task", "mountPath": TASK_MOUNT, "readOnly": True},
        {"name": "scratch", "mountPath": "/tmp"},
        *(
            {"name": "artifacts", "mountPath": f"{store}/{rel}", "subPath": rel, "readOnly": True}
            for rel in inputs(task, store)
        ),
        {
            "name": "artifacts",
            "mountPath": OUTPUT_MOUNT,
            "subPathExpr": f"outputs/$({JOB_UID_ENV})",
        },
    ]
    env = [
        {
            "name": JOB_UID_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{LABEL_JOB_UID}']"}},
        },
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
    ]
    env += [{"name": key, "value": value} for key, value in settings.extra_env]
    pod_spec: Body = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": purpose,
                "image": settings.trainer_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": list(COMMANDS[purpose]),
                "args": ["--task", f"{TASK_MOUNT}/task.json"],
                # A step writes why it failed to /dev/termination-log, one sentence; a step
                # killed before it could leaves its log tail there instead.
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "env": env,
                "resources": _resources(resources),
                "volumeMounts": mounts,
                "securityContext": {
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.priority_class_name:
        pod_spec["priorityClassName"] = resources.priority_class_name
    job_spec: Body = {
        # Studbook retries with its own backoff and a new Job per attempt, so each attempt's
        # outcome stays visible; the Job itself never retries.
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline_seconds,
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {
                    ANNOTATION_TASK: task.model_dump_json(by_alias=True, exclude_none=True)
                },
            },
            "spec": pod_spec,
        },
    }
    if resources.queue_name:
        # Kueue admits suspended Jobs when quota allows.
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": job_spec,
    }


def step_network_policy(namespace: str, settings: JobSettings) -> Body:
    """Deny every connection of a namespace's step pods but to the store.

    Breed, evaluate and trial pods alike: one policy per namespace serves every Descendant and
    BreedingRun in it.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": STEP_POLICY,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "studbook"},
        },
        "spec": {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/managed-by": "studbook"},
                "matchExpressions": [
                    {"key": LABEL_PURPOSE, "operator": "In", "values": list(COMMANDS)}
                ],
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": list(settings.store_egress),
        },
    }
