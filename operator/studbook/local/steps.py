"""The steps of the pipeline that run outside the trainer: signing, and writing step results.

The sign Job (``studbook sign-task``) and ``studbook breed`` run the same function here, so a
descendant is signed the same way on a cluster and on a laptop.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fsspec
from cryptography.hazmat.primitives import serialization

from studbook.api.task import SignResultFile, SignTask
from studbook.artifacts import CertificateSigner, KeylessSigner, KeySigner, Signer, Store
from studbook.artifacts.results import write_result
from studbook.artifacts.signing import sign_artifact, sign_scorecard


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
