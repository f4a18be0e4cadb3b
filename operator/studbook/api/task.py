"""The contract between the operator and the Jobs it runs: task files in, result files out.

A Job reads one task (``--task task.json``) and writes what it makes into its own output
directory, which the task names: the breed step its model under ``model/``, the evaluate step
``scorecard.json``, the trials step of a BreedingRun ``trials.jsonl``. On a cluster that
directory is the only writable part of the store a step pod sees, bound to its Job's uid
(``outputs/<job uid>``). The step is untrusted: it seals nothing and records nothing. Whoever
runs the pipeline (the operator, or ``studbook breed``) seals the model and reads the scorecard
from that directory, and writes its own records of each step. A Job that exits 0 without its
output has failed. Everything here is plain data, shared by the operator (:mod:`studbook.k8s`),
the trainer (``studbook_trainer``) and ``studbook breed``.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, Self

from pydantic import Field, model_validator

from studbook import __version__
from studbook.api.base import ApiModel
from studbook.api.common import Compatibility, Digest, Name, Niche, ShortText, TrainingData
from studbook.api.descendant import ArtifactStatus, LineageStatus, Origin, ResourceProfile
from studbook.api.operators import MergeConfig, OperatorSpec
from studbook.api.suite import EvaluationSuiteSpec, SuiteDataset

TASK_SCHEMA: Final = "task.studbook.dev/v1"
"""The schema version every task names."""

EXIT_FAILED: Final = 1
"""The exit status of a step that failed in a way a retry may cure; it is retried."""
EXIT_REFUSED: Final = 2
"""The exit status of a step that refused its task, a file or its data. No retry can change
that, so the step fails at once. Either way the step's last words, one sentence, are its
termination message (``/dev/termination-log`` on a cluster)."""
TERMINATION_LOG_ENV: Final = "STUDBOOK_TERMINATION_LOG"
"""Names the file a step writes its termination message to, where Kubernetes mounts none."""
MODEL_DIR: Final = "model"
"""The directory in a breed step's output that holds the model it made."""
SCORECARD_FILE: Final = "scorecard.json"
"""The file in an evaluate step's output that holds its scorecard."""
TRIALS_FILE: Final = "trials.jsonl"
"""The file in a trials step's output that holds its results: one :class:`TrialResult` per
line (wire form), appended as each trial finishes."""
MEASURED_METRICS: Final = frozenset({"latency_ms"})
"""Metrics that are measured rather than computed from outputs: no trial objective, since the
same recipe must score the same."""


class ParentArtifact(ApiModel):
    """A parent as a Job sees it: a sealed package in the store."""

    name: Name
    """The parent's name in the descendant's spec."""
    artifact_id: Digest
    """Its artifact id; the Job verifies the files it reads against it."""
    uri: ShortText
    """The package's location in the store."""
    niche: Niche = Niche()
    """Its niche, for evaluation's niche probes."""


class BreedTask(ApiModel):
    """Breed one descendant and seal it into the store."""

    schema_version: Literal["task.studbook.dev/v1"] = TASK_SCHEMA
    """The task schema."""
    step: Literal["breed"] = "breed"
    """The step."""
    descendant: Annotated[str, Field(min_length=1, max_length=253)]
    """``namespace/name`` of the descendant, for logs and lineage."""
    operator: OperatorSpec
    """The operator and its configuration, as in the descendant's spec."""
    parents: Annotated[list[ParentArtifact], Field(max_length=32)] = []
    """The parents, in spec order."""
    data: Annotated[list[TrainingData], Field(max_length=64)] = []
    """The datasets the operator may read, pinned by digest."""
    compatibility: Compatibility
    """The contract the output must meet."""
    store: ShortText
    """The artifact store's URI, which the parents are read from."""
    output: ShortText
    """The step's own output directory: it writes the model to ``model/`` there, and nothing
    anywhere else."""
    origin: Origin | None = None
    """The BreedingRun trial whose recipe this is, recorded in the lineage status."""


class EvaluateTask(ApiModel):
    """Evaluate a sealed artifact on a suite and store its scorecard."""

    schema_version: Literal["task.studbook.dev/v1"] = TASK_SCHEMA
    """The task schema."""
    step: Literal["evaluate"] = "evaluate"
    """The step."""
    descendant: Annotated[str, Field(min_length=1, max_length=253)]
    """``namespace/name`` of the descendant."""
    subject: ParentArtifact
    """The artifact to evaluate."""
    parents: Annotated[list[ParentArtifact], Field(max_length=32)] = []
    """Its parents, compared in the same run."""
    champion: ParentArtifact | None = None
    """The current champion, compared in the same run."""
    uniform_merge_of: Annotated[list[Name], Field(max_length=32)] = []
    """For a merge, the merged parents (the base left out): their uniform linear merge is built
    in the same run as the simple baseline a merge recipe must beat."""
    suite_name: Name
    """The EvaluationSuite's name."""
    suite_digest: Digest
    """The suite's digest, named in the scorecard."""
    suite: EvaluationSuiteSpec
    """The suite itself."""
    store: ShortText
    """The artifact store's URI, which the subject and the parents are read from."""
    output: ShortText
    """The step's own output directory: it writes ``scorecard.json`` there, and nothing
    anywhere else."""


class TrialSpec(ApiModel):
    """One trial of a search: a merge recipe to merge in memory and score."""

    number: Annotated[int, Field(ge=0)]
    """The trial's number in the run's ledger; its result carries it back."""
    merge: MergeConfig
    """The recipe, as a Descendant of it would carry it."""
    parents: Annotated[list[Name], Field(max_length=32)] = []
    """The parents a Descendant of the recipe lists (the search's candidate names them: for
    ``slerp`` the two besides the base), merged as a merge step would merge them: every one but
    the recipe's ``base``. Empty: every parent of the task."""


class TrialTask(ApiModel):
    """Merge and score a batch of a BreedingRun's trials in memory, the parents loaded once.

    No package is written: each recipe is merged into a model held in memory and scored on the
    suite's ``optimize`` datasets, which alone the task carries (gate and holdout data never
    reach a search). Results go to :data:`TRIALS_FILE` in the output, one line per trial as it
    finishes; a recipe the merge engine refuses is a result with an ``error``, not a failed step.
    """

    schema_version: Literal["task.studbook.dev/v1"] = TASK_SCHEMA
    """The task schema."""
    step: Literal["trials"] = "trials"
    """The step."""
    run: Annotated[str, Field(min_length=1, max_length=253)]
    """``namespace/name`` of the BreedingRun, for logs."""
    parents: Annotated[list[ParentArtifact], Field(min_length=2, max_length=32)]
    """The run's parent pool, the base among them; each is verified and loaded once."""
    base: Name | None = None
    """The parent task vectors are taken against (the run's ``base``); it provides the model's
    configuration and tokenizer, else the first parent does."""
    compatibility: Compatibility
    """The contract of the run's descendants."""
    datasets: Annotated[list[SuiteDataset], Field(min_length=1, max_length=32)]
    """The suite's ``optimize`` datasets the objectives read, pinned by digest."""
    objectives: Annotated[
        list[Annotated[str, Field(min_length=3, max_length=128)]],
        Field(min_length=1, max_length=8),
    ]
    """The objective metrics, each ``<dataset>/<metric>`` of ``datasets``."""
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 10
    """The suite's ``calibrationBins``, for an ``ece`` objective."""
    suite_seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """The suite's ``seed``, which a custom task is given."""
    store: ShortText
    """The artifact store's URI, which the parents are read from."""
    output: ShortText
    """The step's own output directory: it writes :data:`TRIALS_FILE` there, and nothing
    anywhere else."""
    trials: Annotated[list[TrialSpec], Field(max_length=10_000)] = []
    """The trials, run in this order."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [p.name for p in self.parents]
        if len(set(names)) != len(names):
            raise ValueError("parents must not list a parent twice")
        if self.base is not None and self.base not in names:
            raise ValueError(f"base {self.base} is not one of the parents")
        datasets = {d.name: d for d in self.datasets}
        if len(datasets) != len(self.datasets):
            raise ValueError("datasets must not list a dataset twice")
        for d in self.datasets:
            if d.role != "optimize":
                raise ValueError(
                    f"dataset {d.name} is a {d.role} dataset: trials see optimize data only"
                )
        for objective in self.objectives:
            dataset, _, metric = objective.partition("/")
            if dataset not in datasets or not metric:
                raise ValueError(f"objective {objective} is not <dataset>/<metric> of the datasets")
            if metric in MEASURED_METRICS:
                raise ValueError(f"objective {objective}: {metric} is measured, not computed")
        numbers = [t.number for t in self.trials]
        if len(set(numbers)) != len(numbers):
            raise ValueError("trials must not list a number twice")
        for trial in self.trials:
            unknown = sorted(set(trial.parents) - set(names))
            if unknown:
                raise ValueError(f"trial {trial.number} names parents the task lacks: {unknown}")
        return self


class TrialResult(ApiModel):
    """What came of one trial: its objective values, or why it failed."""

    number: Annotated[int, Field(ge=0)]
    """The trial's number."""
    metrics: Annotated[dict[str, float], Field(max_length=8)] | None = None
    """The value of every objective metric; unset when the trial failed."""
    error: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    """Why the trial failed, one sentence; unset when it was scored."""
    merge_seconds: Annotated[float, Field(ge=0.0)] = 0.0
    """Wall-clock seconds of merging the recipe into the model."""
    score_seconds: Annotated[float, Field(ge=0.0)] = 0.0
    """Wall-clock seconds of scoring the merged model."""

    @model_validator(mode="after")
    def _scored_or_failed(self) -> Self:
        if (self.metrics is None) == (self.error is None):
            raise ValueError("a trial result holds either metrics or an error")
        return self


class SignTask(ApiModel):
    """Verify a sealed artifact and its scorecard, then sign both."""

    schema_version: Literal["task.studbook.dev/v1"] = TASK_SCHEMA
    """The task schema."""
    step: Literal["sign"] = "sign"
    """The step."""
    descendant: Annotated[str, Field(min_length=1, max_length=253)]
    """``namespace/name`` of the descendant."""
    artifact_id: Digest
    """The artifact to sign; its files are re-hashed first."""
    scorecard_uri: ShortText
    """The scorecard to sign beside it."""
    store: ShortText
    """The artifact store's URI."""
    result: ShortText
    """Where the result (:class:`SignResultFile`) is written."""


class BreedResultFile(ApiModel):
    """The record of a breed step, written once its output is sealed.

    The operator, or ``studbook breed``, writes it: the sealed artifact, and the lineage built
    from the task, not from anything the step said.
    """

    artifact: ArtifactStatus
    """The sealed artifact."""
    lineage: LineageStatus
    """Its lineage record."""
    profile: ResourceProfile | None = None
    """Size and cost measured while sealing."""


class SignResultFile(ApiModel):
    """What the sign step leaves (the operator, or `studbook breed`, runs it)."""

    signature_uri: ShortText
    """Where the artifact's signature bundle is stored."""
    scorecard_signature_uri: ShortText
    """Where the scorecard's signature bundle is stored."""
    signer: ShortText
    """The identity that signed."""


def output_uri(store: str, run: str) -> str:
    """The output directory of one run of a step in the store: ``run`` is its Job's uid.

    A pod sees only this directory writable (mounted by ``subPathExpr`` from its Job's uid), so
    what is found here was written by that Job, and by no other.
    """
    if not re.fullmatch(r"[0-9a-z][0-9a-z-]{0,62}", run):
        raise ValueError(f"not a run id: {run!r}")
    return f"{store.rstrip('/')}/outputs/{run}"


def record_uri(store: str, namespace: str, name: str, uid: str, step: str, attempt: int) -> str:
    """Where the pipeline records one attempt of a descendant's step, inside the artifact store.

    Keyed by the descendant's uid, so a descendant deleted and created again under the same name
    never takes the records of the one before.
    """
    return f"{store.rstrip('/')}/runs/{namespace}/{name}/{uid}/{step}-{attempt}.json"


LEDGER_FILE = "ledger.json"
"""The name of a BreedingRun's ledger (:class:`~studbook.api.ledger.Ledger`) in the store; its
signature is ``ledger.json.sig`` beside it."""


def ledger_uri(store: str, namespace: str, name: str, uid: str) -> str:
    """Where a BreedingRun's ledger lives in the artifact store, keyed by the run's uid."""
    return f"{store.rstrip('/')}/breedingruns/{namespace}/{name}/{uid}/{LEDGER_FILE}"


def code_version(image: str | None) -> str:
    """Studbook's version, with the image's digest where the step's image was pinned by one.

    A tag can be moved; a digest names exactly the code that bred an artifact. The operator and
    the trainer are released together under one version.
    """
    _, at, digest = (image or "").partition("@")
    if at and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return f"{__version__}@{digest}"
    return __version__
