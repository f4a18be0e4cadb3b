"""``studbook breed`` for a BreedingRun: its search on one machine, one trial at a time.

Once the directory's Descendants are bred, each run is admitted (:func:`admit_run`, with the
facts of its Ready parents), then searched: one trial process (``python -m studbook_trainer
trials --task T --serve``) loads the parent pool once, and the search core
(:class:`~studbook.breeding.search.Search`) asks for one recipe at a time, which the process
merges and scores on the suite's optimize data. Trials run one after another here; a run's
``budget.parallelism`` is for trial Jobs on a cluster.

After every proposal and every result the ledger is written whole to the workspace store
(``breedingruns/local/<run>/<search id>/ledger.json``). The search id is a digest of the run's
spec without its budget, the parents' artifact ids and the suite (:func:`run_id`): running the
same command again after an interruption replays the ledger and carries on (trials still running
are sent again, and the trial process answers those it finished from its ``trials.jsonl``, kept
in the same output directory), raising ``maxTrials`` continues a finished search, and any other
change starts a new one. Once the search stops the ledger is signed with the workspace key and
the Descendants of its Pareto front are returned to :class:`~studbook.local.pipeline.LocalBreeder`,
which breeds, evaluates and signs them as any Descendant.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import ValidationError

from studbook.api import Problem
from studbook.api.descendant import Descendant, DescendantStatus
from studbook.api.ledger import Ledger, TrialRecord
from studbook.api.run import BreedingRun, BreedingRunStatus, TrialPoint
from studbook.api.task import (
    LEDGER_FILE,
    ParentArtifact,
    TrialResult,
    TrialSpec,
    ledger_uri,
    output_uri,
)
from studbook.artifacts import Store
from studbook.artifacts.errors import ArtifactError
from studbook.artifacts.signing import sign_ledger
from studbook.breeding.admission import Decision, ParentFacts
from studbook.breeding.runs import (
    admit_run,
    descendant_of,
    layer_count,
    run_id,
    run_key,
    run_status,
    trial_task,
)
from studbook.breeding.search import Decision as SearchDecision
from studbook.breeding.search import Failure, LedgerMismatch, Scores, Search, SearchSpecError
from studbook.local.manifests import Manifests
from studbook.local.steps import signer_from_dir
from studbook.local.workspace import (
    NAMESPACE,
    TRAINER,
    Progress,
    Workspace,
    last_line,
    replace_file,
)

SIGNATURE_SUFFIX = ".sig"
"""The ledger's signature bundle is stored beside it, its name with this suffix."""

TrialCount = Callable[[str, int, int], None]
"""Told a run's name, how many of its trials are done and its ``budget.maxTrials``."""


class RunError(Exception):
    """A BreedingRun that cannot go on; the message names the run and why."""


def refusal_problems(where: str, decision: Decision) -> list[tuple[str, Problem]]:
    """An admission's refusals as problems of the manifest read from ``where``."""
    return [(where, Problem(r.field, f"{r.reason}: {r.message}")) for r in decision.refusals]


class TrialProcess:
    """One trial process in serve mode: the parents loaded once, then trials line by line.

    Its stderr goes to ``log``; a process that ends before it is ready, or before it answers a
    trial, raises :class:`RunError` with the last line it wrote there (the refusal of a task
    whose data or parents do not verify, or the cause of a crash).
    """

    def __init__(self, task: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", TRAINER, "trials", "--task", str(task), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        self._stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        try:
            line = self._stdout.readline()
            if not line:
                raise self._ended("before it loaded the parents")
            ready = json.loads(line)
            if not isinstance(ready, dict) or ready.get("ready") is not True:
                raise RunError(f"the trial process said {line.strip()[:200]!r}, not ready")
            self.load_seconds = float(ready.get("loadSeconds", 0.0))
            """Seconds the process took to verify and load the parents."""
        except BaseException:
            self.process.kill()
            self.close()
            raise

    def _ended(self, when: str) -> RunError:
        code = self.process.wait()
        kind = "refused its task" if code == 2 else f"ended (exit status {code})"
        return RunError(f"the trial process {kind} {when}: {last_line(self.log)}")

    def run(self, trial: TrialSpec) -> TrialResult:
        """Merge and score one trial; its result, failed or not."""
        try:
            self._stdin.write(trial.model_dump_json(by_alias=True, exclude_none=True) + "\n")
            self._stdin.flush()
        except BrokenPipeError:
            raise self._ended(f"before trial {trial.number}") from None
        line = self._stdout.readline()
        if not line:
            raise self._ended(f"during trial {trial.number}")
        try:
            result = TrialResult.model_validate_json(line)
        except ValidationError as error:
            raise RunError(f"trial {trial.number}: the trial process answered {error}") from None
        if result.number != trial.number:
            raise RunError(f"trial {trial.number}: the trial process answered {result.number}")
        return result

    def close(self) -> None:
        """End the process: its input closed, it exits; one that does not is killed."""
        with contextlib.suppress(BrokenPipeError):
            self._stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stdout.close()

    def __enter__(self) -> TrialProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is not None and self.process.poll() is None:
            self.process.terminate()  # interrupted: the trial in flight is sent again next time
        self.close()


@dataclass
class RunSearch:
    """One run's finished search: the Descendants of its front, to breed, and its status."""

    run: BreedingRun
    """The run, in the workspace's namespace."""
    search_id: str
    """The id of its search (:func:`~studbook.breeding.runs.run_id`)."""
    search: Search
    """The search, stopped."""
    decision: SearchDecision
    """Why it stopped."""
    ledger: str
    """Where its ledger is."""
    elapsed_seconds: float
    """Wall-clock seconds its trials took, over every invocation."""
    descendants: list[Descendant] = field(default_factory=list)
    """The Descendants of its Pareto front, fittest first."""


def _named(point: TrialPoint) -> str:
    values = ", ".join(f"{k} {v:.3f}" for k, v in point.objectives.items())
    return f"trial {point.trial} (fitness {point.fitness:.3f}: {values})"


class LocalSearches:
    """Searches the BreedingRuns of a directory in a workspace and records their status."""

    def __init__(
        self, workspace: Workspace, progress: Progress, counted: TrialCount = lambda *_: None
    ) -> None:
        self.workspace = workspace
        self.progress = progress
        self.counted = counted
        self.store = str(workspace.store)

    def refuse(self, run: BreedingRun, where: str, decision: Decision) -> list[tuple[str, Problem]]:
        """Record a run that admission refused as Failed; its problems by file and field."""
        problems = refusal_problems(where, decision)
        message = "; ".join(f"{p.field}: {p.message}" for _, p in problems)
        self._record_failed(run.metadata.name, "", f"refused: {message}")
        return problems

    def _record_failed(self, name: str, search_id: str, message: str) -> None:
        status = BreedingRunStatus(phase="Failed", message=message[:4096])
        self.workspace.record_run(name, search_id, status, None)
        self.progress(name, f"Failed: {message}")

    def search(
        self,
        manifests: Manifests,
        run: BreedingRun,
        parents: Sequence[ParentArtifact],
        facts: Mapping[str, ParentFacts | None],
    ) -> RunSearch:
        """Admit a run on its bred parents and search it to its stop; the front to breed.

        Raises :class:`RunError` when admission refuses it or it cannot run (a parent not
        Ready, a trial process that refuses its task or dies); either way it is recorded Failed.
        """
        name = run.metadata.name
        local = run.model_copy(
            update={"metadata": run.metadata.model_copy(update={"namespace": NAMESPACE})}
        )
        suite = manifests.suites[run.spec.evaluation_suite_ref.name]
        policy = manifests.policies[run.spec.policy_ref.name]
        decision = admit_run(local, suite, policy.spec, facts)
        if decision.refusals:
            problems = self.refuse(run, manifests.source(run), decision)
            said = "; ".join(f"{where}: {problem}" for where, problem in problems)
            raise RunError(f"{name}: admission refused it: {said}")
        if not decision.admitted:
            unready = [*decision.missing, *decision.waiting_for]
            message = f"parentPool: {', '.join(unready)} not Ready, so no trial can run"
            self._record_failed(name, "", message)
            raise RunError(f"{name}: {message}")
        search_id = run_id(local, [p.artifact_id for p in parents], suite)
        try:
            return self._search(manifests, local, search_id, parents)
        except RunError as error:
            self._record_failed(name, search_id, str(error))
            raise RunError(f"{name}: {error}") from None

    def _search(
        self,
        manifests: Manifests,
        run: BreedingRun,
        search_id: str,
        parents: Sequence[ParentArtifact],
    ) -> RunSearch:
        name = run.metadata.name
        spec = run.spec
        suite = manifests.suites[spec.evaluation_suite_ref.name]
        ledger_at = Path(ledger_uri(self.store, NAMESPACE, name, search_id))
        ledger_at.parent.mkdir(parents=True, exist_ok=True)
        output = output_uri(self.store, f"brun-{search_id}")
        Path(output).mkdir(parents=True, exist_ok=True)
        task = trial_task(run, suite, parents, self.store, output, [])
        task_path = ledger_at.with_name("trials.task.json")
        task_path.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
        search = self._resume(run, ledger_at, parents)
        previous = self.workspace.runs().get(name) or {}
        elapsed_before = 0.0
        if previous.get("runId") == search_id:
            elapsed_before = float(previous["status"].get("elapsedSeconds", 0.0))
        started = time.monotonic()

        def elapsed() -> float:
            return elapsed_before + time.monotonic() - started

        def save() -> None:
            ledger = search.ledger().model_dump_json(by_alias=True, exclude_none=True, indent=1)
            replace_file(ledger_at, ledger.encode())

        pending = [_trial(t) for t in search.ledger().trials if t.state == "running"]
        total = spec.budget.max_trials
        log = ledger_at.with_name("trials.log")
        self.counted(name, _told(search), total)
        process: TrialProcess | None = None
        with contextlib.ExitStack() as stack:
            while True:
                if not pending:
                    decision = search.decide(elapsed())
                    if decision.stop:
                        break
                    pending = [
                        TrialSpec(number=c.number, merge=c.recipe, parents=list(c.parents))
                        for c in search.ask(1)
                    ]
                    if not pending:
                        raise RunError("the search proposed no trial and did not stop")
                    save()  # proposed before it runs: an interruption sends it again
                if process is None:  # started once there is a trial to run
                    process = stack.enter_context(TrialProcess(task_path, log))
                    loaded = f"trial process ready: parents loaded in {process.load_seconds:.1f} s"
                    self.progress(name, loaded)
                trial = pending.pop(0)
                result = process.run(trial)
                seconds = result.merge_seconds + result.score_seconds
                try:
                    search.tell(
                        trial.number,
                        Scores(result.metrics, seconds)
                        if result.metrics is not None
                        else Failure(result.error or "failed", seconds),
                    )
                except ValueError as error:  # metrics other than the objectives
                    raise RunError(f"trial {trial.number}: {error}") from None
                save()
                self.counted(name, _told(search), total)
                self.progress(name, self._told_line(search, search.ledger().trials[trial.number]))
        save()
        self._sign(run, ledger_at)
        pins = {p.name: p.artifact_id for p in parents}
        records = search.ledger().trials
        descendants = [descendant_of(run, records[p.trial], pins) for p in search.front()]
        self.progress(name, f"stopped: {decision.message}")
        return RunSearch(run, search_id, search, decision, str(ledger_at), elapsed(), descendants)

    def _resume(
        self, run: BreedingRun, ledger_at: Path, parents: Sequence[ParentArtifact]
    ) -> Search:
        """The search its ledger records, else a new one for the parents' layer count."""
        name = run.metadata.name
        try:
            if ledger_at.exists():
                ledger = Ledger.model_validate_json(ledger_at.read_bytes())
                search = Search.replay(run.spec, ledger)
                told = _told(search)
                self.progress(name, f"resumed from its ledger: {told} trials told")
                return search
            return Search(run.spec, self._layers(run, parents))
        except (ValidationError, LedgerMismatch) as error:
            raise RunError(
                f"its ledger {ledger_at} cannot be replayed ({error}); move it away to start over"
            ) from None
        except SearchSpecError as error:
            raise RunError(f"spec.searchSpace: {error}") from None

    def _layers(self, run: BreedingRun, parents: Sequence[ParentArtifact]) -> int | None:
        """The layer count in the configuration of the base parent (else the first)."""
        reference = run.spec.base or run.spec.parent_pool[0].name
        artifact = next(p for p in parents if p.name == reference)
        try:
            config = json.loads(
                Store.open(self.store).read_file(artifact.artifact_id, "config.json")
            )
        except (ArtifactError, ValueError):
            return None
        return layer_count(config) if isinstance(config, dict) else None

    def _told_line(self, search: Search, record: TrialRecord) -> str:
        head = f"trial {record.number} (generation {record.generation})"
        if record.values is None:
            said = f"{head} failed: {record.failure}"
        else:
            said = head + ": " + ", ".join(f"{k} {v:.3f}" for k, v in record.values.items())
        best = search.best()
        return said + (
            f"; best so far {_named(best)}" if best is not None else "; none feasible yet"
        )

    def _sign(self, run: BreedingRun, ledger_at: Path) -> None:
        """Sign the ledger with the workspace key; the bundle goes beside it."""
        signer, _identity = signer_from_dir(self.workspace.key_dir)
        bundle = sign_ledger(run_key(run), ledger_at.read_bytes(), signer)
        replace_file(ledger_at.with_name(LEDGER_FILE + SIGNATURE_SUFFIX), bundle)

    def finish(self, search: RunSearch, bred: Mapping[str, DescendantStatus]) -> BreedingRunStatus:
        """Record the run's status, its front's Descendants named, once they are bred."""
        run = search.run
        made = {
            d.spec.origin.trial: d.metadata.name
            for d in search.descendants
            if d.spec.origin is not None and d.metadata.name in bred
        }
        status = run_status(
            search.search,
            search.decision,
            made,
            search.ledger,
            search.elapsed_seconds,
            datetime.now(UTC),
        )
        best = search.descendants[0] if search.descendants else None
        self.workspace.record_run(run.metadata.name, search.search_id, status, best)
        said = f"{status.phase}: {status.message}"
        if status.best is not None:
            said += f"; best {_named(status.best)} -> {status.best.descendant}"
        self.progress(run.metadata.name, said)
        return status


def _trial(record: TrialRecord) -> TrialSpec:
    return TrialSpec(number=record.number, merge=record.recipe, parents=record.parents)


def _told(search: Search) -> int:
    return search.trials_done + search.trials_failed
