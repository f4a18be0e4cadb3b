"""The steps of the pipeline that run outside the trainer: signing, and reading step results.

The operator (which signs in its own process) and ``studbook breed`` use the same functions here,
so a descendant is signed and judged the same way on a cluster and on a laptop.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import fsspec
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ValidationError

from studbook.api.descendant import Descendant, DescendantStatus, ScorecardSummary, Step
from studbook.api.policy import EvaluationGates
from studbook.api.scorecard import Scorecard
from studbook.api.task import (
    BreedResultFile,
    EvaluateResultFile,
    SignResultFile,
    SignTask,
    result_uri,
    scorecard_uri,
)
from studbook.artifacts import CertificateSigner, KeylessSigner, KeySigner, Signer, Store
from studbook.artifacts.errors import ArtifactError, SignatureError
from studbook.artifacts.results import read_result, write_result
from studbook.artifacts.signing import sign_artifact, sign_scorecard
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


def signer_from_dir(directory: Path) -> tuple[Signer, str]:
    """The signer a signing directory describes, and the identity it signs as.

    The directory holds ``key.pem``, plus ``cert.pem`` and ``chain.pem`` for a certificate, or
    ``trust_config.json`` for sigstore keyless.
    """
    if (directory / "trust_config.json").exists():
        identity = os.environ.get("STUDBOOK_SIGNER_IDENTITY", "sigstore keyless")
        return KeylessSigner(trust_config=directory / "trust_config.json"), identity
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


def run_sign(task: SignTask, signer: Signer, identity: str) -> SignResultFile:
    """Re-hash the artifact, sign it and its scorecard, and write the result."""
    store = Store.open(task.store)
    with fsspec.open(task.scorecard_uri, "rb") as handle:
        scorecard = handle.read()
    signature = sign_artifact(store, task.artifact_id, signer)
    card = sign_scorecard(store, task.artifact_id, scorecard, signer)
    base = store.package_path(task.artifact_id)
    result = SignResultFile(
        signature_uri=f"{base}/signatures/{signature}",
        scorecard_signature_uri=f"{base}/scorecards/{card}",
        signer=identity,
    )
    write_result(task.result, result)
    return result


def step_results(
    store: str,
    namespace: str,
    name: str,
    jobs: Mapping[tuple[Step, int], JobObservation],
    gates: EvaluationGates,
    reachable: Callable[[str], str] = lambda uri: uri,
    job_store: str | None = None,
) -> tuple[BreedResult | None, EvaluateResult | None, SignResult | None]:
    """What the finished steps of a descendant left in the store, as the flow takes it.

    Only the latest succeeded attempt of a step counts. The scorecard is read back and gated by
    the policy here, outside the pod that computed it. ``job_store`` is the store as the steps
    see it (default: ``store``), and ``reachable`` maps a URI as a step wrote it to one the
    caller can open.
    """

    def latest_uri(step: Step, seen_from: str = store) -> str | None:
        done = [a for (s, a), job in jobs.items() if s == step and job.phase == "Succeeded"]
        return result_uri(seen_from, namespace, name, step, max(done)) if done else None

    def latest(step: Step, model: type[M]) -> M | None:
        uri = latest_uri(step)
        if uri is None:
            return None
        try:
            return read_result(uri, model)
        except ValidationError as error:
            log.warning("%s result at %s is malformed: %s", step, uri, error)
            return None

    bred = latest("breed", BreedResultFile)
    evaluated = latest("evaluate", EvaluateResultFile)
    signed = latest("sign", SignResultFile)
    evaluation = None
    # Where the evaluate step was told to write, in its own terms, which its result must name.
    evaluated_at = latest_uri("evaluate", job_store or store)
    if evaluated is not None and evaluated_at is not None:
        summary = evaluated.scorecard
        expected = scorecard_uri(evaluated_at)
        if summary.uri != expected:
            # The pod chose where its scorecard is; only the location bound to its Job counts.
            log.warning("evaluate result names scorecard %r, not %s", summary.uri, expected)
        else:
            with fsspec.open(reachable(expected), "rb") as handle:
                card = Scorecard.model_validate_json(handle.read())
            # Status shows the stored scorecard, the one signed next, not what the pod says of it.
            headline = ScorecardSummary.of(card, expected)
            evaluation = EvaluateResult(headline, tuple(evaluation_gate(card, gates).reasons))
    return (
        BreedResult(bred.artifact, bred.lineage, bred.profile) if bred else None,
        evaluation,
        SignResult(signed.signature_uri, signed.signer) if signed else None,
    )


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
