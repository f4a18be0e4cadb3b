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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from studbook.api.canonical import digest_of
from studbook.api.common import ParentRef
from studbook.api.descendant import Descendant, DescendantStatus, Step
from studbook.api.policy import BreedingPolicySpec
from studbook.api.run import BreedingRunStatus
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
from studbook.breeding.runs import admit_run
from studbook.breeding.tasks import breed_task, evaluate_task, sign_task
from studbook.local.manifests import Manifests, ManifestsError, order
from studbook.local.runs import LocalSearches, TrialCount, refusal_problems
from studbook.local.steps import (
    parent_facts,
    run_sign,
    seal_output,
    signer_from_dir,
    step_results,
)
from studbook.local.workspace import (
    NAMESPACE,
    TRAINER,
    Activity,
    Progress,
    Workspace,
    last_line,
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


def _unbred_facts(manifests: Manifests, refs: Iterable[ParentRef]) -> dict[str, ParentFacts | None]:
    """What admission knows of parents before any is bred: their manifests alone."""
    unbred = DescendantStatus()
    return {
        ref.name: parent_facts(
            manifests.descendants[ref.name], unbred, _never_called, _never_called
        )
        for ref in refs
    }


def screen(manifests: Manifests) -> dict[tuple[str, str], Decision]:
    """Each descendant and run that admission refuses on its manifests alone, with the decision.

    Keyed by kind and name. Every parent counts as not bred yet, so what needs an artifact
    (signature, pins) waits for the real admission; operator, budget, compatibility, licences,
    data restrictions and a run's objectives do not.
    """
    refused: dict[tuple[str, str], Decision] = {}
    for descendant in order(manifests):
        facts = _unbred_facts(manifests, descendant.spec.parents)
        policy = manifests.policies[descendant.spec.policy_ref.name]
        decision = admit(descendant.spec, policy.spec, facts)
        if decision.refusals:
            refused[("Descendant", descendant.metadata.name)] = decision
    for name, run in sorted(manifests.runs.items()):
        facts = _unbred_facts(manifests, run.spec.parent_pool)
        policy = manifests.policies[run.spec.policy_ref.name]
        suite = manifests.suites[run.spec.evaluation_suite_ref.name]
        decision = admit_run(run, suite, policy.spec, facts)
        if decision.refusals:
            refused[("BreedingRun", name)] = decision
    return refused


def _never_called(_: object) -> None:
    raise AssertionError("a parent that is not bred is never verified")


class RefusedError(ManifestsError):
    """Descendants or runs refused at admission before anything ran, each by file and field."""


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
                activity(last_line(log))
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
        return code, f"exit code {code}: {last_line(log)}"


class LocalBreeder:
    """Breeds a directory of manifests into a workspace: descendants, then BreedingRuns.

    Descendants go parents first; then each run is searched and the Descendants of its Pareto
    front are bred like any other.
    """

    def __init__(
        self,
        workspace: Workspace,
        progress: Progress,
        activity: Activity = lambda _: None,
        counted: TrialCount = lambda *_: None,
    ) -> None:
        self.workspace = workspace
        self.progress = progress
        self.activity = activity
        self.steps = StepProcesses()
        workspace.store.mkdir(parents=True, exist_ok=True)
        self.public_key = workspace.public_key()
        self.store = Store.open(workspace.store)
        self.searches = LocalSearches(workspace, progress, counted)
        """The searches of the directory's BreedingRuns."""

    def breed(
        self, manifests: Manifests
    ) -> Iterator[tuple[str, DescendantStatus | BreedingRunStatus]]:
        """Run every descendant to a terminal phase, parents first, then every BreedingRun.

        Yields each name and status as it finishes: the descendants, then per run the
        Descendants of its Pareto front and the run itself. If admission refuses any descendant
        or run on its manifests alone, nothing runs: each refused descendant is recorded
        Rejected, each refused run Failed, and :class:`RefusedError` names them all, rather than
        failing after its ancestors trained. A run that cannot go on raises
        :class:`~studbook.local.runs.RunError`.
        """
        refused = screen(manifests)
        if refused:
            problems = []
            for descendant in order(manifests):
                decision = refused.get(("Descendant", descendant.metadata.name))
                if decision is not None:
                    self._flow(manifests, descendant, [], decision)
                    problems += refusal_problems(manifests.source(descendant), decision)
            for name, run in sorted(manifests.runs.items()):
                decision = refused.get(("BreedingRun", name))
                if decision is not None:
                    problems += self.searches.refuse(run, manifests.source(run), decision)
            raise RefusedError(problems)
        results: dict[str, DescendantStatus] = {}
        for descendant in order(manifests):
            name = descendant.metadata.name
            results[name] = self._one(manifests, descendant, results)
            yield name, results[name]
        for name, run in sorted(manifests.runs.items()):
            parents = self.artifacts(manifests, run.spec.parent_pool, results)
            facts = self.facts(
                manifests, name, run.spec.policy_ref.name, run.spec.parent_pool, results
            )
            search = self.searches.search(manifests, run, parents, facts)
            for descendant in search.descendants:
                child = descendant.metadata.name
                results[child] = self._one(manifests, descendant, results)
                yield child, results[child]
            yield name, self.searches.finish(search, results)

    def facts(
        self,
        manifests: Manifests,
        who: str,
        policy_name: str,
        refs: Iterable[ParentRef],
        done: Mapping[str, DescendantStatus],
    ) -> dict[str, ParentFacts | None]:
        """What admission needs of each parent of ``who``, its Ready artifact verified now."""
        policy = manifests.policies[policy_name]
        workspace = TrustedKey(self.public_key, "workspace")
        verifier = Verifier(self.store, local_trust(policy.spec, workspace))

        def refused(error: ArtifactError) -> None:
            self.progress(who, f"parent refused: {error}")

        return {
            ref.name: parent_facts(
                manifests.descendants[ref.name], done[ref.name], verifier.verify, refused
            )
            for ref in refs
        }

    @staticmethod
    def artifacts(
        manifests: Manifests, refs: Iterable[ParentRef], done: Mapping[str, DescendantStatus]
    ) -> list[ParentArtifact]:
        """The sealed packages of the parents that have one, in the order given."""
        return [
            ParentArtifact(
                name=ref.name,
                artifact_id=artifact.id,
                uri=artifact.uri,
                niche=manifests.descendants[ref.name].spec.niche,
            )
            for ref in refs
            if (artifact := done[ref.name].artifact) is not None
        ]

    def _one(
        self, manifests: Manifests, descendant: Descendant, done: dict[str, DescendantStatus]
    ) -> DescendantStatus:
        name = descendant.metadata.name
        spec = descendant.spec
        parents = self.artifacts(manifests, spec.parents, done)
        policy = manifests.policies[spec.policy_ref.name]
        # Admission runs every time: a reused artifact must pass the policy as it is now.
        facts = self.facts(manifests, name, spec.policy_ref.name, spec.parents, done)
        decision = admit(spec, policy.spec, facts)
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
