"""The contract between the operator and the Jobs it runs: task files in, result files out.

A Job reads one task (``--task task.json``) and, on success, writes one result JSON to the
``result`` URI the task names, in the artifact store. The operator reads that result back; a Job
that exits 0 without a result has failed. Everything here is plain data, shared by the operator
(:mod:`studbook.k8s`), the trainer (``studbook_trainer``) and ``studbook breed``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from studbook.api.base import ApiModel
from studbook.api.common import Compatibility, Digest, Name, Niche, ShortText, TrainingData
from studbook.api.descendant import ArtifactStatus, LineageStatus, ResourceProfile, ScorecardSummary
from studbook.api.operators import OperatorSpec
from studbook.api.suite import EvaluationSuiteSpec

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
IMAGE_ENV: Final = "STUDBOOK_IMAGE"
"""The image reference a step's pod runs, as the operator wrote it into the pod spec: the
lineage's codeVersion names the image's digest where the reference pins one."""


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
    """The artifact store's URI; the sealed package goes there."""
    result: ShortText
    """Where the result (:class:`BreedResultFile`) is written."""


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
    """The artifact store's URI."""
    result: ShortText
    """Where the result (:class:`EvaluateResultFile`) is written."""


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
    """What a breed Job leaves."""

    artifact: ArtifactStatus
    """The sealed artifact."""
    lineage: LineageStatus
    """Its lineage record."""
    profile: ResourceProfile | None = None
    """Size and cost measured while breeding."""
    log: Annotated[list[str], Field(max_length=64)] = []
    """Notable lines for the descendant's status and events."""


class EvaluateResultFile(ApiModel):
    """What an evaluate Job leaves."""

    scorecard: ScorecardSummary
    """The scorecard's summary; the full scorecard is at ``scorecard.uri``."""
    profile: ResourceProfile | None = None
    """Latency and size measured during evaluation."""


class SignResultFile(ApiModel):
    """What the sign step leaves (the operator, or `studbook breed`, runs it)."""

    signature_uri: ShortText
    """Where the artifact's signature bundle is stored."""
    scorecard_signature_uri: ShortText
    """Where the scorecard's signature bundle is stored."""
    signer: ShortText
    """The identity that signed."""


def result_uri(store: str, namespace: str, name: str, step: str, attempt: int) -> str:
    """Where the Job of one step and attempt writes its result, inside the artifact store."""
    return f"{store.rstrip('/')}/runs/{namespace}/{name}/{step}-{attempt}.json"


def scorecard_uri(result: str) -> str:
    """Where an evaluate Job stores its full scorecard: beside its result.

    The operator derives it from the result's location and opens nothing else, whatever URI the
    untrusted evaluate pod reports.
    """
    return result.removesuffix(".json") + ".scorecard.json"
