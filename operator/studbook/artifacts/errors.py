"""Every way an artifact can be refused, one exception class each.

All of them derive from :class:`ArtifactError`, so a caller that only needs "refused or not"
catches that; a caller that reports the reason (an admission webhook, a condition's ``reason``)
reads :attr:`ArtifactError.reason`, a CamelCase constant.
"""

from __future__ import annotations


class ArtifactError(Exception):
    """Base of every refusal raised by :mod:`studbook.artifacts`."""

    reason = "ArtifactRefused"
    """A CamelCase constant naming the failure, fit for a condition's ``reason``."""


class PackageFormatError(ArtifactError):
    """A package directory or manifest is not in a shape Studbook reads."""

    reason = "PackageMalformed"


class ArtifactNotFoundError(ArtifactError):
    """No sealed package with this id is in the store."""

    reason = "ArtifactNotFound"


class ArtifactIdMismatchError(ArtifactError):
    """The id recomputed from the file list is not the id the package claims."""

    reason = "ArtifactIdMismatch"


class IntegrityError(ArtifactError):
    """The stored files are not the files that were sealed."""

    reason = "IntegrityFailed"


class ContentMismatchError(IntegrityError):
    """A file's bytes changed: its digest (or size) is not the sealed one."""

    reason = "ContentMismatch"


class MissingFileError(IntegrityError):
    """A sealed file is absent."""

    reason = "FileMissing"


class ExtraFileError(IntegrityError):
    """A file is present that was never sealed (and so is not signed)."""

    reason = "UnsignedFile"


class RenamedFileError(IntegrityError):
    """A sealed file is present under another name."""

    reason = "FileRenamed"


class SigningError(ArtifactError):
    """Signing failed (bad key, refused token, unreachable sigstore); nothing was stored."""

    reason = "SigningFailed"


class SignatureError(ArtifactError):
    """A signature is missing, unreadable, invalid or from an untrusted signer."""

    reason = "SignatureRefused"


class UnsignedArtifactError(SignatureError):
    """The package carries no signature at all."""

    reason = "Unsigned"


class MalformedSignatureError(SignatureError):
    """A signature file cannot be read as a sigstore bundle (truncated, not JSON, ...)."""

    reason = "SignatureMalformed"


class SignatureInvalidError(SignatureError):
    """The signature bytes do not verify with the key they name."""

    reason = "SignatureInvalid"


class WrongKeyError(SignatureError):
    """The signature was made with a key that is not among the trusted keys."""

    reason = "UntrustedKey"


class UntrustedCertificateError(SignatureError):
    """The signing certificate does not chain to a trusted certificate authority."""

    reason = "UntrustedCertificate"


class CertificateExpiredError(SignatureError):
    """The signing certificate is outside its validity period."""

    reason = "CertificateExpired"


class SignerIdentityError(SignatureError):
    """The certificate is valid but names a signer (SAN, issuer) the policy does not trust."""

    reason = "SignerNotTrusted"


class SignatureSubjectError(SignatureError):
    """A valid signature, but over another artifact (a foreign signature)."""

    reason = "SignatureSubjectMismatch"


class ScorecardError(ArtifactError):
    """A scorecard is unreadable, unsigned, or fails verification."""

    reason = "ScorecardRefused"


class ScorecardSubjectError(ScorecardError):
    """The scorecard's subject is another artifact."""

    reason = "ScorecardSubjectMismatch"


class ParentVerificationError(ArtifactError):
    """A parent (or a further ancestor) of the artifact fails verification."""

    reason = "ParentNotVerified"

    def __init__(self, child: str, parent: str, cause: ArtifactError) -> None:
        super().__init__(f"parent {parent} of {child} is refused: {cause}")
        self.child = child
        self.parent = parent
        self.cause = cause


class LineageError(ArtifactError):
    """A lineage query cannot be answered (unknown id, no path, a cycle)."""

    reason = "LineageInvalid"


class GraphvizNotInstalledError(LineageError):
    """Rendering a picture needs Graphviz's ``dot`` on the PATH."""

    reason = "GraphvizMissing"
