"""``studbook breed``: the operator's pipeline on one machine.

The same admission, the same flow (:func:`studbook.breeding.flow.reconcile`), the same task
files and the same steps; only where they run differs (a local process instead of a Job) and
where state lives (a workspace directory instead of resource status).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from studbook.api.canonical import digest_of
from studbook.api.descendant import Descendant, DescendantStatus, Step
from studbook.api.policy import BreedingPolicy
from studbook.api.suite import EvaluationSuite
from studbook.api.task import ParentArtifact
from studbook.artifacts import Store, TrustedKey, Verifier
from studbook.artifacts.errors import ArtifactError
from studbook.artifacts.policy import trust_policy
from studbook.breeding.admission import ParentFacts, admit
from studbook.breeding.flow import TERMINAL, JobObservation, Observed, job_name, reconcile
from studbook.breeding.tasks import breed_task, evaluate_task, sign_task
from studbook.local.manifests import Manifests, order
from studbook.local.steps import parent_facts, run_sign, signer_from_dir, step_results

NAMESPACE = "local"
"""The namespace of every run in a workspace: results live under ``runs/local/<name>``."""

Progress = Callable[[str, str], None]
"""Told each event of a descendant: its name and what happened."""
Activity = Callable[[str], None]
"""Told the latest output line of the step that is running, about twice a second."""


@dataclass
class Workspace:
    """Where local breeding keeps its store, its runs, its key and its registry."""

    root: Path

    @property
    def store(self) -> Path:
        """The artifact store."""
        return self.root / "store"

    @property
    def key_dir(self) -> Path:
        """The local signing key (``key.pem``), created on first use."""
        return self.root / "signing"

    @property
    def registry_path(self) -> Path:
        """Each descendant's status and the inputs it was bred from."""
        return self.root / "registry.json"

    def registry(self) -> dict[str, Any]:
        """The registry, empty for a new workspace."""
        if not self.registry_path.exists():
            return {}
        loaded: dict[str, Any] = json.loads(self.registry_path.read_text())
        return loaded

    def record(self, name: str, inputs: str, status: DescendantStatus) -> None:
        """Record one descendant; the registry is replaced atomically, so a crash loses nothing."""
        registry = self.registry()
        registry[name] = {"inputs": inputs, "status": status.to_wire()}
        partial = self.registry_path.with_name(f".registry.{uuid.uuid4().hex}")
        partial.write_text(json.dumps(registry, indent=2, sort_keys=True))
        os.replace(partial, self.registry_path)

    def public_key(self) -> bytes:
        """The workspace's signing key, created on first use; its public half."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        path = self.key_dir / "key.pem"
        if not path.exists():
            self.key_dir.mkdir(parents=True, exist_ok=True)
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _inputs(
    descendant: Descendant,
    parents: list[ParentArtifact],
    policy: BreedingPolicy,
    suite: EvaluationSuite,
) -> str:
    """What a descendant is bred, judged and evaluated from: unchanged inputs are not run again.

    The policy and suite count whole: a new gate or dataset re-evaluates, never a stale verdict.
    """
    spec = descendant.spec
    return digest_of(
        {
            "operator": spec.operator.to_wire(),
            "parents": [p.artifact_id for p in parents],
            "data": [d.to_wire() for d in spec.data],
            "compatibility": spec.compatibility.to_wire(),
            "policy": policy.spec.to_wire(),
            "suite": suite.spec.to_wire(),
        }
    )


def _last_line(log: Path) -> str:
    """The last non-empty line of a step's log; progress bars rewrite theirs with CR."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 2048))
        tail = handle.read().decode(errors="replace")
    lines = [part.strip() for part in tail.replace("\r", "\n").splitlines() if part.strip()]
    return lines[-1] if lines else ""


TRAINER = "studbook_trainer"
"""The trainer's entry point, what a breeding Job runs: ``python -m studbook_trainer``."""


def _trainer_main(argv: list[str], log: str) -> None:
    """A step's process: ``python -m studbook_trainer ARGV``, its output going to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = [TRAINER, *argv]
    runpy.run_module(TRAINER, run_name="__main__", alter_sys=True)


class StepProcesses:
    """Starts trainer steps as processes forked from a server that imported the ML stack once.

    Each step still gets a fresh process of its own (a crash stays in it, its memory goes back),
    but not a fresh interpreter: importing torch and transformers takes longer than most steps
    of a small model.
    """

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(
            ["torch", "transformers", "peft", f"{TRAINER}.steps", f"{TRAINER}.evaluation"]
        )

    def run(self, argv: list[str], log: Path, activity: Activity) -> tuple[bool, str]:
        """Run one step, reporting its latest log line; whether it succeeded, and its tail."""
        log.touch()
        process = self.context.Process(target=_trainer_main, args=(argv, str(log)))
        process.start()
        try:
            while process.exitcode is None:
                activity(_last_line(log))
                process.join(0.5)
        finally:
            # Interrupted (Ctrl-C): the step goes too; its results were never recorded.
            if process.exitcode is None:
                process.terminate()
                process.join()
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        return process.exitcode == 0, f"exit code {process.exitcode}: {tail}"


class LocalBreeder:
    """Breeds the descendants of a directory of manifests into a workspace, parents first."""

    def __init__(
        self, workspace: Workspace, progress: Progress, activity: Activity = lambda _: None
    ) -> None:
        self.workspace = workspace
        self.progress = progress
        self.activity = activity
        self.steps = StepProcesses()
        workspace.store.mkdir(parents=True, exist_ok=True)
        self.public_key = workspace.public_key()
        self.store = Store.open(workspace.store)

    def breed(self, manifests: Manifests) -> Iterator[tuple[str, DescendantStatus]]:
        """Run every descendant to a terminal phase, parents first.

        Yields each name and status as it finishes.
        """
        results: dict[str, DescendantStatus] = {}
        for descendant in order(manifests):
            name = descendant.metadata.name
            results[name] = self._one(manifests, descendant, results)
            yield name, results[name]

    def _facts(
        self, manifests: Manifests, descendant: Descendant, done: dict[str, DescendantStatus]
    ) -> dict[str, ParentFacts | None]:
        policy = manifests.policies[descendant.spec.policy_ref.name]
        # Keyless identities need a cluster's trust configuration; locally, keys and CAs count,
        # and the workspace key is the local signer: what it signed, this machine bred.
        offline = [s for s in policy.spec.trusted_signers if s.keyless is None]
        trust = trust_policy(offline)
        trust = type(trust)((*trust.signers, TrustedKey(self.public_key, "workspace")))
        verifier = Verifier(self.store, trust)

        def refused(error: ArtifactError) -> None:
            self.progress(descendant.metadata.name, f"parent refused: {error}")

        return {
            ref.name: parent_facts(
                manifests.descendants[ref.name], done[ref.name], verifier.verify, refused
            )
            for ref in descendant.spec.parents
        }

    def _one(
        self, manifests: Manifests, descendant: Descendant, done: dict[str, DescendantStatus]
    ) -> DescendantStatus:
        name = descendant.metadata.name
        policy = manifests.policies[descendant.spec.policy_ref.name]
        suite = manifests.suites[descendant.spec.evaluation_suite_ref.name]
        parents = [
            ParentArtifact(
                name=ref.name,
                artifact_id=done[ref.name].artifact.id,  # type: ignore[union-attr]
                uri=done[ref.name].artifact.uri,  # type: ignore[union-attr]
                niche=manifests.descendants[ref.name].spec.niche,
            )
            for ref in descendant.spec.parents
            if done[ref.name].artifact is not None
        ]
        inputs = _inputs(descendant, parents, policy, suite)
        previous = self.workspace.registry().get(name)
        if previous and previous["inputs"] == inputs and previous["status"]["phase"] == "Ready":
            status = DescendantStatus.model_validate_json(json.dumps(previous["status"]))
            if status.artifact is not None and self.store.exists(status.artifact.id):
                self.progress(name, f"reused {status.artifact.short_id}")
                return status
        decision = admit(descendant.spec, policy.spec, self._facts(manifests, descendant, done))
        status = DescendantStatus()
        jobs: dict[tuple[Step, int], JobObservation] = {}
        store = str(self.workspace.store)
        runs = self.workspace.store / "runs" / NAMESPACE / name
        runs.mkdir(parents=True, exist_ok=True)
        local = descendant.model_copy(
            update={"metadata": descendant.metadata.model_copy(update={"namespace": NAMESPACE})}
        )
        while True:
            breed, evaluate, sign = step_results(
                store, NAMESPACE, name, jobs, policy.spec.evaluation_gates
            )
            plan = reconcile(
                Observed(
                    name=name,
                    generation=1,
                    status=status,
                    now=datetime.now(UTC),
                    decision=decision,
                    jobs=jobs,
                    breed=breed,
                    evaluate=evaluate,
                    sign=sign,
                    max_attempts=1 + descendant.spec.resources.backoff_limit,
                )
            )
            status = plan.status
            if status.phase in TERMINAL:
                break
            if not plan.create:
                # Parents are bred first, so only a step's backoff before its retry waits here.
                if plan.requeue_after is None or status.phase == "Pending":
                    break
                self.progress(name, f"{status.message}; retrying in {plan.requeue_after:.0f} s")
                time.sleep(plan.requeue_after)
                continue
            for step, attempt in plan.create:
                self.progress(name, f"{step} (attempt {attempt})")
                task_path = runs / f"{step}-{attempt}.task.json"
                if step == "breed":
                    task: Any = breed_task(local, parents, store, attempt)
                elif step == "evaluate":
                    assert breed is not None
                    subject = ParentArtifact(
                        name=name,
                        artifact_id=breed.artifact.id,
                        uri=breed.artifact.uri,
                        niche=descendant.spec.niche,
                    )
                    task = evaluate_task(local, subject, parents, suite, store, attempt)
                else:
                    assert breed is not None and evaluate is not None
                    task = sign_task(
                        local, breed.artifact.id, str(evaluate.scorecard.uri), store, attempt
                    )
                task_path.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
                run = job_name(name, step, attempt)
                jobs[(step, attempt)] = self._run(step, attempt, run, task_path, runs)
        self.workspace.record(name, inputs, status)
        self.progress(name, status.phase + (f": {status.message}" if status.message else ""))
        return status

    def _run(
        self, step: Step, attempt: int, run: str, task_path: Path, runs: Path
    ) -> JobObservation:
        started = datetime.now(UTC)
        if step == "sign":
            try:
                signer, identity = signer_from_dir(self.workspace.key_dir)
                from studbook.api.task import SignTask

                run_sign(SignTask.model_validate_json(task_path.read_bytes()), signer, identity)
                ok, reason = True, ""
            except (ArtifactError, OSError, ValueError) as error:
                ok, reason = False, str(error)
        else:
            command = "run" if step == "breed" else "evaluate"
            ok, reason = self.steps.run(
                [command, "--task", str(task_path)], runs / f"{step}-{attempt}.log", self.activity
            )
        return JobObservation(
            step=step,
            attempt=attempt,
            name=run,
            phase="Succeeded" if ok else "Failed",
            reason=None if ok else reason,
            started_at=started,
            finished_at=datetime.now(UTC),
        )
