"""The trusted half of the pipeline: sealing and judging what the steps left, and signing.

Breed and evaluate steps are untrusted: each writes only into its own output directory. The
operator (in its own process) and ``studbook breed`` use the same functions here to seal a breed
step's model with the lineage its task gives, to read an evaluate step's scorecard from that
step's output and nowhere else, and to sign, so a descendant is sealed, signed and judged the
same way on a cluster and on a laptop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import fsspec
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ValidationError

from studbook.api.canonical import digest_of
from studbook.api.descendant import (
    ArtifactStatus,
    Descendant,
    DescendantStatus,
    LineageStatus,
    ResourceProfile,
    ScorecardSummary,
    Step,
)
from studbook.api.policy import EvaluationGates
from studbook.api.scorecard import Scorecard
from studbook.api.task import (
    EXIT_REFUSED,
    MODEL_DIR,
    SCORECARD_FILE,
    BreedResultFile,
    BreedTask,
    SignResultFile,
    SignTask,
    code_version,
    output_uri,
)
from studbook.artifacts import CertificateSigner, KeylessSigner, KeySigner, Lineage, Signer, Store
from studbook.artifacts.errors import ArtifactError, PackageFormatError, SignatureError
from studbook.artifacts.results import read_result, read_untrusted, write_result
from studbook.artifacts.signing import (
    DEFAULT_TOKEN_PATH,
    describe_signature,
    sign_artifact,
    sign_scorecard,
)
from studbook.breeding.admission import ParentFacts
from studbook.breeding.flow import (
    BreedResult,
    EvaluateResult,
    JobObservation,
    SignResult,
)
from studbook.breeding.gates import evaluation_gate

log = logging.getLogger("studbook.steps")
M = TypeVar("M", bound=BaseModel)


def signer_from_dir(directory: Path) -> tuple[Signer, str | None]:
    """The signer a signing directory describes, and the identity it signs as.

    The directory holds ``key.pem``, plus ``cert.pem`` and ``chain.pem`` for a certificate, or
    ``trust_config.json`` for sigstore keyless, with the projected service-account ``token``
    beside it (else the signer reads :data:`DEFAULT_TOKEN_PATH`). A keyless identity is known
    only once Fulcio has certified it: ``None`` until then.
    """
    if (directory / "trust_config.json").exists():
        token = directory / "token"
        signer = KeylessSigner(
            trust_config=directory / "trust_config.json",
            token_path=token if token.exists() else DEFAULT_TOKEN_PATH,
        )
        return signer, None
    key = directory / "key.pem"
    if not key.exists():
        raise FileNotFoundError(f"no key.pem or trust_config.json in {directory}")
    if (directory / "cert.pem").exists():
        chain = (directory / "chain.pem",)
        return CertificateSigner(key, directory / "cert.pem", chain), f"certificate {key.parent}"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeySigner(key), "key:" + hashlib.sha256(public).hexdigest()[:16]


SCORECARD_LIMIT = 16 * 2**20
"""The largest scorecard read from a step's output."""


def run_sign(task: SignTask, signer: Signer, identity: str | None) -> SignResultFile:
    """Re-hash the artifact, sign it and its scorecard, and write the result.

    ``identity`` names the signer in the result; ``None`` takes it from the signature's
    certificate (keyless: what Fulcio certified).
    """
    store = Store.open(task.store)
    scorecard = read_untrusted(task.scorecard_uri, SCORECARD_LIMIT)
    if scorecard is None:
        raise PackageFormatError(f"no scorecard at {task.scorecard_uri}")
    signature = sign_artifact(store, task.artifact_id, signer)
    card = sign_scorecard(store, task.artifact_id, scorecard, signer)
    if identity is None:
        (bundle,) = [b for b in store.signatures(task.artifact_id) if b.name == signature]
        identity = str(describe_signature(bundle.data)["signer"])
    base = store.package_path(task.artifact_id)
    result = SignResultFile(
        signature_uri=f"{base}/signatures/{signature}",
        scorecard_signature_uri=f"{base}/scorecards/{card}",
        signer=identity,
    )
    write_result(task.result, result)
    return result


def lineage_of(task: BreedTask, image: str | None) -> Lineage:
    """The lineage of what a breed task makes: its inputs, as the task names them.

    Built from the task the pipeline handed the step, never from anything the step said.
    """
    return Lineage(
        parents=tuple(p.artifact_id for p in task.parents),
        operator=task.operator.kind,
        config_hash=digest_of(task.operator.content_config()),
        dataset_digests={d.name: d.digest for d in task.data},
        code_version=code_version(image),
    )


@contextmanager
def _local(directory: str) -> Iterator[Path]:
    """A directory of a store as a local one: itself, or a copy of an object store's."""
    fs, path = fsspec.core.url_to_fs(directory)
    if "file" in fs.protocol:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="studbook-output-") as tmp:
        if fs.exists(path):
            fs.get(path.rstrip("/") + "/", tmp, recursive=True)
            yield Path(tmp)
        else:
            yield Path(tmp) / "absent"


def seal_output(store: Store, task: BreedTask, output: str, image: str | None) -> BreedResultFile:
    """Seal the model a breed step left in ``output``, with the lineage its task gives.

    The step's output is untrusted: a link or anything but a regular file in it refuses it
    (:class:`PackageFormatError`). A step that left no model raises :class:`FileNotFoundError`.
    The output is left as it is: :func:`discard_output` removes it once the result is recorded.
    """
    lineage = lineage_of(task, image)
    with _local(f"{output.rstrip('/')}/{MODEL_DIR}") as model:
        if model.is_symlink():
            raise PackageFormatError(f"the step's {MODEL_DIR} is a symbolic link")
        if not model.exists():
            raise FileNotFoundError(f"the step left no {MODEL_DIR} in its output")
        manifest = store.seal(model, lineage)
    created = datetime.now(UTC)
    return BreedResultFile(
        artifact=ArtifactStatus(
            id=manifest.id,
            short_id=manifest.id[7:19],
            uri=store.package_path(manifest.id),
            size_bytes=manifest.size,
        ),
        lineage=LineageStatus(
            parent_ids=list(lineage.parents),
            operator=task.operator.kind,
            config_hash=lineage.config_hash,
            data_digests=[d.digest for d in task.data],
            code_version=lineage.code_version,
            created_at=created,
            origin=task.origin,
        ),
        profile=ResourceProfile(size_bytes=manifest.size),
    )


def discard_output(output: str) -> None:
    """Remove a breed step's model from its output once it is sealed and recorded."""
    fs, path = fsspec.core.url_to_fs(f"{output.rstrip('/')}/{MODEL_DIR}")
    if "file" in fs.protocol:
        shutil.rmtree(path, ignore_errors=True)
    elif fs.exists(path):
        fs.rm(path, recursive=True)


@dataclass(frozen=True)
class StepResults:
    """What the finished steps of a descendant left, as the flow takes it."""

    breed: BreedResult | None
    evaluate: EvaluateResult | None
    sign: SignResult | None
    jobs: Mapping[tuple[Step, int], JobObservation]
    """The observed Jobs; a succeeded one whose output was refused shows as failed, refused."""


Records = Callable[[Step, int], str]
"""Where the pipeline records an attempt of a step (``studbook.api.task.record_uri``)."""


def step_results(
    store: str,
    records: Records,
    jobs: Mapping[tuple[Step, int], JobObservation],
    gates: EvaluationGates,
    seal: Callable[[JobObservation, str], BreedResultFile],
) -> StepResults:
    """Seal, read and judge what the latest succeeded attempt of each step left.

    A breed step's model is sealed by ``seal`` (given the Job and its output) once, and the
    record written; an evaluate step's scorecard is read from its own output only, re-checked
    and gated by the policy here, outside the pod that computed it. ``store`` is the store as
    the caller reaches it; each Job's output is ``outputs/<its uid>`` in it.
    """
    observed = dict(jobs)

    def latest(step: Step) -> JobObservation | None:
        done = [a for (s, a), job in jobs.items() if s == step and job.phase == "Succeeded"]
        return jobs[(step, max(done))] if done else None

    def refuse(job: JobObservation, why: str) -> None:
        log.warning("%s attempt %d refused: %s", job.step, job.attempt, why)
        observed[(job.step, job.attempt)] = dataclasses.replace(
            job, phase="Failed", exit_code=EXIT_REFUSED, reason=why
        )

    bred = None
    if (job := latest("breed")) is not None and job.uid is not None:
        record = records("breed", job.attempt)
        bred = _read_record(record, BreedResultFile)
        if bred is None:
            output = output_uri(store, job.uid)
            try:
                bred = seal(job, output)
            except ArtifactError as error:
                refuse(job, f"its output was refused: {error}")
            except FileNotFoundError:
                pass  # the flow says the Job left no result
            else:
                write_result(record, bred)
                discard_output(output)
    evaluation = None
    if (job := latest("evaluate")) is not None and job.uid is not None and bred is not None:
        uri = f"{output_uri(store, job.uid)}/{SCORECARD_FILE}"
        try:
            evaluation = _judge(uri, bred.artifact.id, gates)
        except (ArtifactError, ValidationError) as error:
            refuse(job, f"its scorecard was refused: {error}")
    sign = None
    if (job := latest("sign")) is not None:
        signed = _read_record(records("sign", job.attempt), SignResultFile)
        sign = SignResult(signed.signature_uri, signed.signer) if signed else None
    return StepResults(
        BreedResult(bred.artifact, bred.lineage, bred.profile) if bred else None,
        evaluation,
        sign,
        observed,
    )


def _read_record(uri: str, model: type[M]) -> M | None:
    try:
        return read_result(uri, model)
    except ValidationError as error:
        log.warning("the record at %s is malformed: %s", uri, error)
        return None


def _judge(uri: str, subject: str, gates: EvaluationGates) -> EvaluateResult | None:
    """The scorecard at ``uri``, checked to be about ``subject``, and the policy's verdict."""
    raw = read_untrusted(uri, SCORECARD_LIMIT)
    if raw is None:
        return None
    card = Scorecard.model_validate_json(raw)
    if card.subject != subject:
        raise PackageFormatError(f"it scores {card.subject}, not the artifact {subject}")
    # Status shows the stored scorecard, the one signed next, not what the pod says of it.
    headline = ScorecardSummary.of(card, uri)
    return EvaluateResult(headline, tuple(evaluation_gate(card, gates).reasons))


def parent_facts(
    parent: Descendant,
    status: DescendantStatus,
    verify: Callable[[str], object],
    refused: Callable[[ArtifactError], None],
) -> ParentFacts:
    """What admission needs to know of a parent, verifying its artifact if it is Ready.

    A Ready parent is re-hashed and its signature checked by ``verify``; a file that no longer
    hashes makes it tampered, a missing or untrusted signature unsigned. ``refused`` hears why.
    """
    artifact = status.artifact
    ready = status.phase == "Ready" and artifact is not None and artifact.signer is not None
    failed = f"{status.phase}: {status.message}" if status.phase in ("Failed", "Rejected") else None
    signed = intact = False
    if ready and artifact is not None:
        try:
            verify(artifact.id)
            signed = intact = True
        except SignatureError as error:
            intact = True
            refused(error)
        except ArtifactError as error:
            refused(error)
    return ParentFacts(
        name=parent.metadata.name,
        ready=ready,
        failed=failed,
        compatibility=parent.spec.compatibility,
        license=parent.spec.license,
        artifact_id=artifact.id if artifact else None,
        signed=signed,
        intact=intact,
        restrictions=frozenset(r for d in parent.spec.data for r in d.restrictions),
        licenses=frozenset({parent.spec.license}),
    )
