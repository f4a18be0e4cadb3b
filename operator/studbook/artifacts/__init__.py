"""Immutable content-addressed packages, their stores, signing and verification.

The public surface:

* :class:`Store` (``Store.open(uri)``): seal a directory into a package, read it back verified.
* :class:`Lineage`, :class:`Manifest`, :func:`artifact_id`, :class:`DigestParams`.
* Signing: :class:`KeySigner`, :class:`CertificateSigner`, :class:`KeylessSigner`,
  :func:`sign_artifact`, :func:`sign_scorecard`.
* Verification: :class:`TrustPolicy` of :class:`TrustedKey`,
  :class:`TrustedCertificateAuthority`, :class:`TrustedKeylessIdentity`; :class:`Verifier`.
* Lineage graphs: :class:`LineageGraph`.
* Errors: :mod:`studbook.artifacts.errors`, one class per way to be refused.
"""

from studbook.artifacts.digest import DigestParams, FileEntry, artifact_id
from studbook.artifacts.errors import ArtifactError
from studbook.artifacts.lineage import LineageGraph
from studbook.artifacts.package import Lineage, Manifest, config_hash
from studbook.artifacts.signing import (
    CertificateSigner,
    KeylessSigner,
    KeySigner,
    Signer,
    SignerIdentity,
    TrustedCertificateAuthority,
    TrustedKey,
    TrustedKeylessIdentity,
    TrustedSigner,
    TrustPolicy,
    VerifiedArtifact,
    VerifiedScorecard,
    Verifier,
    sign_artifact,
    sign_scorecard,
    verify_scorecard,
)
from studbook.artifacts.store import Store

__all__ = [
    "ArtifactError",
    "CertificateSigner",
    "DigestParams",
    "FileEntry",
    "KeySigner",
    "KeylessSigner",
    "Lineage",
    "LineageGraph",
    "Manifest",
    "Signer",
    "SignerIdentity",
    "Store",
    "TrustPolicy",
    "TrustedCertificateAuthority",
    "TrustedKey",
    "TrustedKeylessIdentity",
    "TrustedSigner",
    "VerifiedArtifact",
    "VerifiedScorecard",
    "Verifier",
    "artifact_id",
    "config_hash",
    "sign_artifact",
    "sign_scorecard",
    "verify_scorecard",
]
