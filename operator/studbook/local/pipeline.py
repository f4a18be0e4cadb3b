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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from studbook.api import Problem
from studbook.api.canonical import digest_of
from studbook.api.descendant import Descendant, DescendantStatus, Step
from studbook.api.policy import BreedingPolicySpec
from studbook.api.task import (
    EXIT_FAILED,
    TERMINATION_LOG_ENV,
    BreedResultFile,
    BreedTask,
    ParentArtifact,
    SignTask,
    output_uri,
    record_uri,
)
from studbook.artifacts import Store, TrustedKey, TrustPolicy, Verifier
from studbook.artifacts.errors import ArtifactError
from studbook.artifacts.policy import trust_policy
from studbook.breeding.admission import Decision, ParentFacts, admit
from studbook.breeding.flow import TERMINAL, JobObservation, Observed, job_name, reconcile
from studbook.breeding.tasks import breed_task, evaluate_task, sign_task
from studbook.local.manifests import Manifests, ManifestsError, order
from studbook.local.steps import (
    parent_facts,
    run_sign,
    seal_output,
    signer_from_dir,
    step_results,
)

NAMESPACE = "local"
"""The namespace of every run in a workspace: each run of a descendant keeps its tasks, logs and
records under ``runs/local/<name>/<run id>``, and each step writes into ``outputs/<its id>``."""

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


def local_trust(policy: BreedingPolicySpec, *keys: TrustedKey) -> TrustPolicy:
    """Whose signatures count on this machine: the policy's keys and CAs, and ``keys``.

    Keyless identities need a cluster's trust configuration; locally, keys and CAs count, and
    the workspace key is the local signer: what it signed, this machine bred.
    """
    offline = [s for s in policy.trusted_signers if s.keyless is None]
    trust = trust_policy(offline)
    return replace(trust, signers=(*trust.signers, *keys))


def _inputs(manifests: Manifests, descendant: Descendant, parents: list[ParentArtifact]) -> str:
    """What a descendant is bred, judged and evaluated from: unchanged inputs are not run again.

    The spec, policy and suite count whole: a new licence, pin, gate or dataset runs again,
    never a stale verdict.
    """
    spec = descendant.spec
    return digest_of(
        {
            "spec": spec.to_wire(),
            "parents": [p.artifact_id for p in parents],
            "policy": manifests.policies[spec.policy_ref.name].spec.to_wire(),
            "suite": manifests.suites[spec.evaluation_suite_ref.name].spec.to_wire(),
        }
    )


def screen(manifests: Manifests) -> dict[str, Decision]:
    """Each descendant that admission refuses on its manifests alone, with the decision.

    Every parent counts as not bred yet, so what needs an artifact (signature, pins) waits for
    the real admission; operator, budget, compatibility, licences and data restrictions do not.
    """
    unbred = DescendantStatus()
    refused = {}
    for descendant in order(manifests):
        facts: dict[str, ParentFacts | None] = {
            ref.name: parent_facts(
                manifests.descendants[ref.name], unbred, _never_called, _never_called
            )
            for ref in descendant.spec.parents
        }
        policy = manifests.policies[descendant.spec.policy_ref.name]
        decision = admit(descendant.spec, policy.spec, facts)
        if decision.refusals:
            refused[descendant.metadata.name] = decision
    return refused


def _never_called(_: object) -> None:
    raise AssertionError("a parent that is not bred is never verified")


class RefusedError(ManifestsError):
    """Descendants refused at admission before anything was bred, each by file and field."""


def _last_line(log: Path) -> str:
    """The last non-empty line of a step's log; progress bars rewrite theirs with CR."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 2048))
        tail = handle.read().decode(errors="replace")
    lines = [part.strip() for part in tail.replace("\r", "\n").splitlines() if part.strip()]
    return lines[-1] if lines else ""


TRAINER = "studbook_trainer"
"""The trainer's entry point, what a breeding Job runs: ``python -m studbook_trainer``."""


def _trainer_main(argv: list[str], log: str, reason: str) -> None:
    """A step's process: ``python -m studbook_trainer ARGV``, its output going to ``log``.

    If it fails, the step writes why to ``reason``, as a Job's pod writes its termination log.
    """
    os.environ[TERMINATION_LOG_ENV] = reason
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

    def run(self, argv: list[str], log: Path, activity: Activity) -> tuple[int, str]:
        """Run one step, reporting its latest log line; its exit code, and why it failed."""
        log.touch()
        reason = log.with_suffix(".reason")
        reason.unlink(missing_ok=True)
        process = self.context.Process(target=_trainer_main, args=(argv, str(log), str(reason)))
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
        code = process.exitcode
        if code == 0:
            return 0, ""
        if reason.exists():
            return code, reason.read_text(errors="replace").strip()
        # Killed, or crashed before it could say why: its log ends with the likeliest cause.
        return code, f"exit code {code}: {_last_line(log)}"


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

        Yields each name and status as it finishes. If admission refuses any descendant on its
        manifests alone, nothing runs: each refused one is recorded Rejected and
        :class:`RefusedError` names them all, rather than failing after its ancestors trained.
        """
        refused = screen(manifests)
        if refused:
            problems = []
            for descendant in order(manifests):
                decision = refused.get(descendant.metadata.name)
                if decision is not None:
                    self._flow(manifests, descendant, [], decision)
                    where = manifests.source(descendant)
                    problems += [
                        (where, Problem(r.field, f"{r.reason}: {r.message}"))
                        for r in decision.refusals
                    ]
            raise RefusedError(problems)
        results: dict[str, DescendantStatus] = {}
        for descendant in order(manifests):
            name = descendant.metadata.name
            results[name] = self._one(manifests, descendant, results)
            yield name, results[name]

    def _facts(
        self, manifests: Manifests, descendant: Descendant, done: dict[str, DescendantStatus]
    ) -> dict[str, ParentFacts | None]:
        policy = manifests.policies[descendant.spec.policy_ref.name]
        workspace = TrustedKey(self.public_key, "workspace")
        verifier = Verifier(self.store, local_trust(policy.spec, workspace))

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
        policy = manifests.policies[descendant.spec.policy_ref.name]
        # Admission runs every time: a reused artifact must pass the policy as it is now.
        decision = admit(descendant.spec, policy.spec, self._facts(manifests, descendant, done))
        previous = self.workspace.registry().get(name)
        if (
            decision.admitted
            and previous
            and previous["inputs"] == _inputs(manifests, descendant, parents)
            and previous["status"]["phase"] == "Ready"
        ):
            status = DescendantStatus.model_validate_json(json.dumps(previous["status"]))
            if status.artifact is not None and self.store.exists(status.artifact.id):
                self.progress(name, f"reused {status.artifact.short_id}")
                return status
        return self._flow(manifests, descendant, parents, decision)

    def _flow(
        self,
        manifests: Manifests,
        descendant: Descendant,
        parents: list[ParentArtifact],
        decision: Decision,
    ) -> DescendantStatus:
        """Run the flow from admission to a terminal phase, and record it."""
        name = descendant.metadata.name
        policy = manifests.policies[descendant.spec.policy_ref.name]
        suite = manifests.suites[descendant.spec.evaluation_suite_ref.name]
        status = DescendantStatus()
        jobs: dict[tuple[Step, int], JobObservation] = {}
        store = str(self.workspace.store)
        # Each run of a descendant is new, as a resource created again gets a new uid.
        flow = uuid.uuid4().hex
        runs = self.workspace.store / "runs" / NAMESPACE / name / flow
        runs.mkdir(parents=True, exist_ok=True)
        local = descendant.model_copy(
            update={"metadata": descendant.metadata.model_copy(update={"namespace": NAMESPACE})}
        )
        bred: dict[str, BreedTask] = {}

        def records(step: Step, attempt: int) -> str:
            return record_uri(store, NAMESPACE, name, flow, step, attempt)

        def seal(job: JobObservation, output: str) -> BreedResultFile:
            return seal_output(self.store, bred[str(job.uid)], output, None)

        while True:
            results = step_results(store, records, jobs, policy.spec.evaluation_gates, seal)
            breed, evaluate = results.breed, results.evaluate
            plan = reconcile(
                Observed(
                    name=name,
                    generation=1,
                    status=status,
                    now=datetime.now(UTC),
                    decision=decision,
                    jobs=results.jobs,
                    breed=breed,
                    evaluate=evaluate,
                    sign=results.sign,
                    max_attempts=1 + descendant.spec.resources.backoff_limit,
                )
            )
            jobs = dict(results.jobs)
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
                run = uuid.uuid4().hex
                output = output_uri(store, run)
                task: Any
                if step == "breed":
                    task = bred[run] = breed_task(local, parents, store, output)
                elif step == "evaluate":
                    assert breed is not None
                    subject = ParentArtifact(
                        name=name,
                        artifact_id=breed.artifact.id,
                        uri=breed.artifact.uri,
                        niche=descendant.spec.niche,
                    )
                    task = evaluate_task(local, subject, parents, suite, store, output)
                else:
                    assert breed is not None and evaluate is not None
                    scorecard = str(evaluate.scorecard.uri)
                    record = records("sign", attempt)
                    task = sign_task(local, breed.artifact.id, scorecard, store, record)
                if step != "sign":
                    Path(output).mkdir(parents=True)
                task_path.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
                job = self._run(step, attempt, job_name(name, step, attempt), task_path, runs)
                jobs[(step, attempt)] = replace(job, uid=run)
        self.workspace.record(name, _inputs(manifests, descendant, parents), status)
        self.progress(name, status.phase + (f": {status.message}" if status.message else ""))
        return status

    def _run(
        self, step: Step, attempt: int, run: str, task_path: Path, runs: Path
    ) -> JobObservation:
        started = datetime.now(UTC)
        if step == "sign":
            try:
                signer, identity = signer_from_dir(self.workspace.key_dir)
                run_sign(SignTask.model_validate_json(task_path.read_bytes()), signer, identity)
                code, reason = 0, ""
            except (ArtifactError, OSError, ValueError) as error:
                # As the operator's signing fails on an exception: retried.
                code, reason = EXIT_FAILED, str(error)
        else:
            command = "run" if step == "breed" else "evaluate"
            code, reason = self.steps.run(
                [command, "--task", str(task_path)], runs / f"{step}-{attempt}.log", self.activity
            )
        return JobObservation(
            step=step,
            attempt=attempt,
            name=run,
            phase="Succeeded" if code == 0 else "Failed",
            reason=reason or None,
            started_at=started,
            finished_at=datetime.now(UTC),
            exit_code=code or None,
        )
