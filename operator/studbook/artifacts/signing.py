"""Signing and verifying packages and scorecards with model-signing (sigstore bundles).

Three ways to sign, one value type each: :class:`KeySigner` (an elliptic-curve key),
:class:`CertificateSigner` (a key with its certificate chain) and :class:`KeylessSigner`
(sigstore keyless with a projected service-account token and a trust configuration). Signing
runs outside the training pod: it re-hashes the stored package, so it signs what is stored.

The signed statement is model-signing's in-toto statement over the package's shard digests
(shard serialization, the same shard size as the id), with the artifact id as its subject name.
The id is a function of those shard digests, so the signature binds the id, and a stock
``model_signing verify`` with the same shard size accepts the files too.

A scorecard is signed on its own (subject: the artifact id, one resource: the scorecard's
bytes), so evaluating a model never changes its id.

What model-signing does not check, we do: the signer's SAN against a pattern, the certificate's
validity period today (model-signing checks the chain at the certificate's ``notBefore``), and
which artifact a signature speaks for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from studbook.artifacts.digest import DigestParams, HashedFile, split_id
from studbook.artifacts.errors import (
    ArtifactError,
    CertificateExpiredError,
    MalformedSignatureError,
    ParentVerificationError,
    ScorecardError,
    ScorecardSubjectError,
    SignatureError,
    SignatureInvalidError,
    SignatureSubjectError,
    SignerIdentityError,
    SigningError,
    UnsignedArtifactError,
    UntrustedCertificateError,
    WrongKeyError,
)
from studbook.artifacts.package import Lineage, Manifest
from studbook.artifacts.store import Progress, Store

DEFAULT_TOKEN_PATH = Path("/var/run/secrets/sigstore/token")
"""Where the pod's projected service-account token (audience ``sigstore``) is mounted."""

SCORECARD_RESOURCE = "scorecard.json"
"""The one resource named in a scorecard's signed statement."""
LEDGER_RESOURCE = "ledger.json"
"""The one resource named in a BreedingRun ledger's signed statement."""

_OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


# -- how to sign ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySigner:
    """Sign with an elliptic-curve private key (P-256, P-384 or P-521), PEM."""

    private_key: Path
    """PEM file of the private key."""
    password: str | None = None
    """Password of an encrypted key."""


@dataclass(frozen=True)
class CertificateSigner:
    """Sign with a private key and its certificate; the chain travels in the bundle."""

    private_key: Path
    """PEM file of the private key."""
    certificate: Path
    """PEM file of the signing (leaf) certificate."""
    chain: tuple[Path, ...]
    """PEM files of the issuing certificates, leaf side first (at least one: model-signing
    1.1.1 cannot load an empty chain; the root may be included, verifiers ignore it)."""

    def __post_init__(self) -> None:
        if not self.chain:
            raise ValueError("a certificate signer needs its issuing chain (at least the CA)")


@dataclass(frozen=True)
class KeylessSigner:
    """Sign with sigstore keyless: Fulcio certificate for an OIDC token, logged in Rekor."""

    trust_config: Path
    """A sigstore ClientTrustConfig JSON (trusted root plus signing config)."""
    token_path: Path = DEFAULT_TOKEN_PATH
    """The projected service-account token; read at signing time (it rotates)."""
    token: str | None = None
    """An explicit token instead of ``token_path``."""
    oidc_issuer: str | None = None
    """The OIDC issuer; by default the one named in the trust configuration."""


Signer = KeySigner | CertificateSigner | KeylessSigner
"""Any way to sign."""


# -- whom to trust -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A public key whose signatures are accepted."""

    public_key: bytes
    """PEM of the public key."""
    name: str = ""
    """A label for messages."""

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the PEM SubjectPublicKeyInfo (model-signing's key hint)."""
        key = serialization.load_pem_public_key(self.public_key)
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(pem).hexdigest()


@dataclass(frozen=True)
class TrustedCertificateAuthority:
    """Certificates chaining to ``ca_certificates`` whose SAN matches ``san_pattern``."""

    ca_certificates: bytes
    """PEM bundle of the trusted root (and intermediate) certificates."""
    san_pattern: str
    """A regular expression; some SAN (URI, e-mail or DNS name) must match it in full."""


@dataclass(frozen=True)
class TrustedKeylessIdentity:
    """Sigstore keyless certificates for one identity (or pattern) from one OIDC issuer."""

    issuer: str
    """The OIDC issuer, exactly (e.g. the cluster's service-account issuer)."""
    trust_config: bytes
    """The sigstore ClientTrustConfig JSON to verify against (its trusted root is used)."""
    identity: str | None = None
    """The exact identity, e.g. ``https://kubernetes.io/namespaces/ns/serviceaccounts/sa``."""
    identity_pattern: str | None = None
    """Or a regular expression the identity must match in full."""

    def __post_init__(self) -> None:
        if (self.identity is None) == (self.identity_pattern is None):
            raise ValueError("give exactly one of identity and identity_pattern")

    def accepts(self, identity: str) -> bool:
        """Whether a certificate identity is this one."""
        if self.identity is not None:
            return identity == self.identity
        assert self.identity_pattern is not None
        return re.fullmatch(self.identity_pattern, identity) is not None


TrustedSigner = TrustedKey | TrustedCertificateAuthority | TrustedKeylessIdentity
"""Any trusted signer."""


@dataclass(frozen=True)
class TrustPolicy:
    """What verification accepts."""

    signers: tuple[TrustedSigner, ...]
    """A signature from any of these is accepted."""
    check_parents: bool = True
    """Verify parents (recursively) as well."""
    now: datetime | None = None
    """The time certificates must be valid at; now by default."""


@dataclass(frozen=True)
class SignerIdentity:
    """Who signed, as verification established it."""

    kind: Literal["key", "certificate", "keyless"]
    """How it was signed."""
    subject: str
    """Key fingerprint, certificate SAN, or keyless identity."""
    issuer: str | None = None
    """Certificate issuer (certificate) or OIDC issuer (keyless)."""

    def __str__(self) -> str:
        extra = f" (issuer {self.issuer})" if self.issuer else ""
        return f"{self.kind}:{self.subject}{extra}"


@dataclass(frozen=True)
class VerifiedArtifact:
    """A package that passed verification."""

    id: str
    """The artifact id."""
    manifest: Manifest
    """Its manifest."""
    lineage: Lineage
    """Its lineage record."""
    signer: SignerIdentity
    """Who signed it."""
    parents: tuple[VerifiedArtifact, ...] = field(default=())
    """Its verified parents (empty when parents were not checked)."""

    def ancestors(self) -> list[VerifiedArtifact]:
        """Every verified ancestor once, nearest first."""
        out: list[VerifiedArtifact] = []
        queue = list(self.parents)
        while queue:
            node = queue.pop(0)
            if all(node.id != seen.id for seen in out):
                out.append(node)
                queue.extend(node.parents)
        return out


@dataclass(frozen=True)
class VerifiedScorecard:
    """A scorecard that passed verification."""

    subject: str
    """The artifact id it is about."""
    data: dict[str, Any]
    """The scorecard's JSON."""
    signer: SignerIdentity
    """Who signed it."""


# -- model-signing glue --------------------------------------------------------------------


def _ms_payload(manifest: Any) -> Any:
    from model_signing._signing import signing as ms_signing

    return ms_signing.Payload(manifest)


def _shard_manifest(artifact: str, hashed: Sequence[HashedFile], params: DigestParams) -> Any:
    from model_signing import manifest as ms_manifest
    from model_signing._hashing.hashing import Digest

    if params.file_digest == "sha256":
        # Plain per-file digests: model-signing's file serialization.
        files = [
            ms_manifest.FileManifestItem(
                path=Path(h.entry.path), digest=Digest("sha256", bytes.fromhex(h.entry.sha256))
            )
            for h in hashed
        ]
        return ms_manifest.Manifest(artifact, files, ms_manifest._FileSerialization("sha256"))

    # model-signing names shard digests this way; matching it keeps stock verifiers happy.
    algorithm = f"sha256-sharded-{params.shard_size}"
    items = [
        ms_manifest.ShardedFileManifestItem(
            path=Path(s.path), start=s.start, end=s.end, digest=Digest(algorithm, s.sha256)
        )
        for h in hashed
        for s in h.shards
    ]
    kind = ms_manifest._ShardSerialization("sha256", params.shard_size, False)
    return ms_manifest.Manifest(artifact, items, kind)


def _document_manifest(subject: str, resource: str, data: bytes) -> Any:
    """A signed statement about one document: its subject and the digest of its bytes."""
    from model_signing import manifest as ms_manifest
    from model_signing._hashing.hashing import Digest

    item = ms_manifest.FileManifestItem(
        path=Path(resource), digest=Digest("sha256", hashlib.sha256(data).digest())
    )
    return ms_manifest.Manifest(subject, [item], ms_manifest._FileSerialization("sha256"))


def _scorecard_manifest(artifact: str, scorecard: bytes) -> Any:
    return _document_manifest(artifact, SCORECARD_RESOURCE, scorecard)


def ledger_subject(run: str) -> str:
    """The subject a ledger's signature names: ``breedingrun:<namespace>/<name>``."""
    return f"breedingrun:{run}"


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="studbook-sign-") as tmp:
        yield Path(tmp)


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def _sign_manifest(manifest: Any, signer: Signer) -> bytes:
    try:
        return _sign_manifest_unchecked(manifest, signer)
    except ArtifactError:
        raise
    except Exception as exc:
        raise SigningError(f"signing with {type(signer).__name__} failed: {exc}") from exc


def _sign_manifest_unchecked(manifest: Any, signer: Signer) -> bytes:
    payload = _ms_payload(manifest)
    with _scratch() as tmp:
        if isinstance(signer, KeySigner):
            from model_signing._signing import sign_ec_key

            ms_signer: Any = sign_ec_key.Signer(signer.private_key, signer.password)
        elif isinstance(signer, CertificateSigner):
            from model_signing._signing import sign_certificate

            ms_signer = sign_certificate.Signer(
                signer.private_key, signer.certificate, list(signer.chain)
            )
        else:
            from model_signing._signing import sign_sigstore

            token = signer.token or signer.token_path.read_text().strip()
            ms_signer = sign_sigstore.Signer(
                oidc_issuer=signer.oidc_issuer,
                identity_token=token,
                trust_config=signer.trust_config,
            )
        signature = ms_signer.sign(payload)
        out = tmp / "bundle.json"
        signature.write(out)
        return out.read_bytes()


def sign_artifact(
    store: Store,
    artifact: str,
    signer: Signer,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> str:
    """Re-hash a stored package, sign it, and store the signature beside it; return its name."""
    manifest, hashed = store.check_files(artifact, progress=progress, workers=workers)
    bundle = _sign_manifest(_shard_manifest(artifact, hashed, manifest.params), signer)
    return store.add_signature(artifact, bundle)


def scorecard_subject(scorecard: bytes) -> str:
    """The artifact id a scorecard is about (its ``subject`` field)."""
    try:
        data = json.loads(scorecard)
        subject = data["subject"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ScorecardError(f"a scorecard must be a JSON object with a subject: {exc}") from exc
    if not isinstance(subject, str):
        raise ScorecardError("a scorecard's subject must be an artifact id")
    split_id(subject)
    return subject


def sign_scorecard(store: Store, artifact: str, scorecard: bytes, signer: Signer) -> str:
    """Sign a scorecard about ``artifact`` and store both beside the package."""
    subject = scorecard_subject(scorecard)
    if subject != artifact:
        raise ScorecardSubjectError(f"the scorecard is about {subject}, not {artifact}")
    store.manifest(artifact)
    bundle = _sign_manifest(_scorecard_manifest(artifact, scorecard), signer)
    return store.add_scorecard(artifact, scorecard, bundle)


def sign_ledger(run: str, ledger: bytes, signer: Signer) -> bytes:
    """Sign the ledger of the run ``namespace/name``; the signature bundle's bytes."""
    return _sign_manifest(_document_manifest(ledger_subject(run), LEDGER_RESOURCE, ledger), signer)


# -- verification --------------------------------------------------------------------------


def _material(bundle: bytes) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(bundle)
        material = data["verificationMaterial"]
        data["dsseEnvelope"]["payload"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedSignatureError(f"not a sigstore bundle with a DSSE envelope: {exc}") from exc
    if not isinstance(material, dict):
        raise MalformedSignatureError("the bundle's verification material is not an object")
    for kind, key in (
        ("key", "publicKey"),
        ("certificate", "x509CertificateChain"),
        ("keyless", "certificate"),
    ):
        if key in material:
            return kind, material
    raise MalformedSignatureError("the bundle names no key and no certificate")


def _read_signature(kind: str, path: Path) -> Any:
    try:
        if kind == "keyless":
            from model_signing._signing import sign_sigstore

            return sign_sigstore.Signature.read(path)
        from model_signing._signing import sign_sigstore_pb

        return sign_sigstore_pb.Signature.read(path)
    except Exception as exc:
        raise MalformedSignatureError(f"unreadable signature bundle: {exc}") from exc


def _cert_identities(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for kind in (x509.UniformResourceIdentifier, x509.RFC822Name, x509.DNSName):
        names.extend(str(v) for v in san.get_values_for_type(kind))
    return names


def _oidc_issuer(cert: x509.Certificate) -> str | None:
    for oid in (_OIDC_ISSUER_V2, _OIDC_ISSUER_V1):
        try:
            raw = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        value: bytes = raw.value  # type: ignore[attr-defined]
        if oid == _OIDC_ISSUER_V2 and len(value) > 2 and value[0] == 0x0C:
            # A DER UTF8String: tag, length (short or long form), then the text.
            start = 2 + (value[1] & 0x7F if value[1] & 0x80 else 0)
            return value[start:].decode()
        return value.decode()
    return None


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise CertificateExpiredError(
            f"the signing certificate expired at {cert.not_valid_after_utc.isoformat()}"
        )
    if now < cert.not_valid_before_utc:
        raise CertificateExpiredError(
            f"the signing certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )


class _Checked:
    """A signature whose cryptography and signer were accepted: its statement and signer."""

    def __init__(self, statement: Any, signer: SignerIdentity) -> None:
        self.statement = statement
        self.signer = signer


def _verify_key(bundle: bytes, material: dict[str, Any], keys: list[TrustedKey]) -> _Checked:
    from model_signing._signing import sign_ec_key

    hint = material["publicKey"].get("hint", "")
    matching = [k for k in keys if k.fingerprint == hint]
    if not matching:
        raise WrongKeyError(
            f"signed with key {hint or '(unnamed)'}, which is not a trusted key"
            + (f" (trusted: {', '.join(k.name or k.fingerprint for k in keys)})" if keys else "")
        )
    with _scratch() as tmp:
        signature = _read_signature("key", _write(tmp, "bundle.json", bundle))
        for key in matching:
            verifier = sign_ec_key.Verifier(_write(tmp, "key.pem", key.public_key))
            try:
                statement = verifier.verify(signature)
            except Exception as exc:
                raise SignatureInvalidError(
                    f"the signature does not verify with key {key.name or key.fingerprint}: {exc}"
                ) from exc
            return _Checked(statement, SignerIdentity("key", key.name or key.fingerprint))
    raise AssertionError("unreachable")  # pragma: no cover


def _verify_certificate(
    bundle: bytes,
    material: dict[str, Any],
    cas: list[TrustedCertificateAuthority],
    now: datetime,
) -> _Checked:
    from cryptography.exceptions import InvalidSignature
    from model_signing._signing import sign_certificate
    from OpenSSL.crypto import X509StoreContextError

    try:
        leaf_der = base64.b64decode(material["x509CertificateChain"]["certificates"][0]["rawBytes"])
        leaf = x509.load_der_x509_certificate(leaf_der)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MalformedSignatureError(f"unreadable signing certificate: {exc}") from exc
    if not cas:
        raise UntrustedCertificateError("no certificate authority is trusted")
    names = _cert_identities(leaf)
    chained: list[tuple[TrustedCertificateAuthority, Any]] = []
    invalid: Exception | None = None
    with _scratch() as tmp:
        signature = _read_signature("certificate", _write(tmp, "bundle.json", bundle))
        for i, ca in enumerate(cas):
            verifier = sign_certificate.Verifier([_write(tmp, f"ca{i}.pem", ca.ca_certificates)])
            try:
                chained.append((ca, verifier.verify(signature)))
            except X509StoreContextError:
                continue
            except (InvalidSignature, ValueError) as exc:
                invalid = exc
    if not chained:
        if invalid is not None:
            raise SignatureInvalidError(f"the signature does not verify: {invalid}")
        raise UntrustedCertificateError(
            f"the signing certificate ({leaf.subject.rfc4514_string()}) does not chain to a"
            " trusted certificate authority"
        )
    _check_validity(leaf, now)
    for ca, statement in chained:
        for name in names:
            if re.fullmatch(ca.san_pattern, name):
                return _Checked(
                    statement,
                    SignerIdentity("certificate", name, leaf.issuer.rfc4514_string()),
                )
    raise SignerIdentityError(
        f"the certificate names {', '.join(names) or 'no SAN'}, which matches no trusted pattern"
        f" ({', '.join(ca.san_pattern for ca, _ in chained)})"
    )


def _verify_keyless(
    bundle: bytes, material: dict[str, Any], identities: list[TrustedKeylessIdentity]
) -> _Checked:
    from model_signing._signing import sign_sigstore

    try:
        leaf = x509.load_der_x509_certificate(base64.b64decode(material["certificate"]["rawBytes"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedSignatureError(f"unreadable signing certificate: {exc}") from exc
    names = _cert_identities(leaf)
    issuer = _oidc_issuer(leaf)
    candidates = [
        (ti, name)
        for ti in identities
        for name in names
        if ti.issuer == issuer and ti.accepts(name)
    ]
    if not candidates:
        raise SignerIdentityError(
            f"signed by {', '.join(names) or 'no identity'} (issuer {issuer}), which is not a"
            " trusted keyless identity"
        )
    errors = []
    with _scratch() as tmp:
        signature = _read_signature("keyless", _write(tmp, "bundle.json", bundle))
        for i, (ti, name) in enumerate(candidates):
            verifier = sign_sigstore.Verifier(
                identity=name,
                oidc_issuer=ti.issuer,
                trust_config=_write(tmp, f"trust{i}.json", ti.trust_config),
            )
            try:
                statement = verifier.verify(signature)
            except Exception as exc:
                errors.append(str(exc))
                continue
            return _Checked(statement, SignerIdentity("keyless", name, ti.issuer))
    raise SignatureInvalidError(f"the keyless signature does not verify: {'; '.join(errors)}")


def _check_signature(bundle: bytes, policy: TrustPolicy) -> _Checked:
    kind, material = _material(bundle)
    now = policy.now or datetime.now(UTC)
    if kind == "key":
        keys = [s for s in policy.signers if isinstance(s, TrustedKey)]
        return _verify_key(bundle, material, keys)
    if kind == "certificate":
        cas = [s for s in policy.signers if isinstance(s, TrustedCertificateAuthority)]
        return _verify_certificate(bundle, material, cas, now)
    ids = [s for s in policy.signers if isinstance(s, TrustedKeylessIdentity)]
    return _verify_keyless(bundle, material, ids)


def _statement_resources(statement: Any) -> dict[str, str]:
    return {rd.identifier: rd.digest.digest_hex for rd in statement.resource_descriptors()}


def _check_artifact_statement(
    artifact: str, statement: Any, hashed: Sequence[HashedFile], params: DigestParams
) -> None:
    if statement.model_name != artifact:
        raise SignatureSubjectError(
            f"the signature is over {statement.model_name}, not {artifact} (a foreign signature)"
        )
    expected = _shard_manifest(artifact, hashed, params)
    if statement.serialization_type != expected.serialization_type:
        raise SignatureSubjectError(
            f"the signature hashes files as {statement.serialization_type}, this package as"
            f" {expected.serialization_type}"
        )
    if _statement_resources(statement) != _statement_resources(expected):
        raise SignatureSubjectError(f"the signed statement does not list the files of {artifact}")


class Verifier:
    """Verifies packages of one store against one policy; results are cached by id."""

    def __init__(self, store: Store, policy: TrustPolicy, *, workers: int | None = None) -> None:
        self.store = store
        self.policy = policy
        self.workers = workers
        self._cache: dict[str, VerifiedArtifact] = {}

    def verify(
        self, artifact: str, *, progress: Progress | None = None, _path: tuple[str, ...] = ()
    ) -> VerifiedArtifact:
        """Verify a package, its signature and signer, and (by policy) its ancestors.

        Raises a subclass of :class:`~studbook.artifacts.errors.ArtifactError`; reads only.
        """
        if artifact in self._cache:
            return self._cache[artifact]
        if artifact in _path:
            raise ParentVerificationError(_path[-1], artifact, ArtifactError("lineage cycle"))
        manifest, hashed = self.store.check_files(artifact, progress=progress, workers=self.workers)
        signatures = self.store.signatures(artifact)
        if not signatures:
            raise UnsignedArtifactError(f"{artifact} carries no signature")
        errors: list[SignatureError] = []
        signer: SignerIdentity | None = None
        for blob in signatures:
            try:
                checked = _check_signature(blob.data, self.policy)
                _check_artifact_statement(artifact, checked.statement, hashed, manifest.params)
            except SignatureError as exc:
                errors.append(exc)
                continue
            signer = checked.signer
            break
        if signer is None:
            raise errors[0]
        lineage = self.store.lineage(artifact)
        parents: list[VerifiedArtifact] = []
        if self.policy.check_parents:
            for parent in lineage.parents:
                try:
                    parents.append(self.verify(parent, _path=(*_path, artifact)))
                except ParentVerificationError:
                    raise
                except ArtifactError as exc:
                    raise ParentVerificationError(artifact, parent, exc) from exc
        result = VerifiedArtifact(artifact, manifest, lineage, signer, tuple(parents))
        self._cache[artifact] = result
        return result

    def verify_scorecards(self, artifact: str) -> list[VerifiedScorecard]:
        """Verify every scorecard stored beside a package; refuse any that fails."""
        self.store.manifest(artifact)
        out = []
        for card, bundle in self.store.scorecards(artifact):
            out.append(
                verify_scorecard(artifact, card.data, bundle.data if bundle else None, self.policy)
            )
        return out


def verify_scorecard(
    artifact: str, scorecard: bytes, bundle: bytes | None, policy: TrustPolicy
) -> VerifiedScorecard:
    """Verify one scorecard about ``artifact`` and its signature bundle."""
    subject = scorecard_subject(scorecard)
    if subject != artifact:
        raise ScorecardSubjectError(f"the scorecard is about {subject}, not {artifact}")
    if bundle is None:
        raise UnsignedArtifactError(f"the scorecard about {artifact} is not signed")
    checked = _check_signature(bundle, policy)
    statement = checked.statement
    if statement.model_name != artifact:
        raise ScorecardSubjectError(
            f"the scorecard's signature is about {statement.model_name}, not {artifact}"
        )
    expected = _scorecard_manifest(artifact, scorecard)
    if _statement_resources(statement) != _statement_resources(expected):
        raise ScorecardError("the scorecard's bytes are not the ones that were signed")
    return VerifiedScorecard(subject, json.loads(scorecard), checked.signer)


def verify_ledger(run: str, ledger: bytes, bundle: bytes, policy: TrustPolicy) -> SignerIdentity:
    """Verify the signature of the ledger of the run ``namespace/name``; who signed it."""
    checked = _check_signature(bundle, policy)
    if checked.statement.model_name != ledger_subject(run):
        raise SignatureSubjectError(
            f"the signature is about {checked.statement.model_name}, not the ledger of {run}"
        )
    expected = _document_manifest(ledger_subject(run), LEDGER_RESOURCE, ledger)
    if _statement_resources(checked.statement) != _statement_resources(expected):
        raise SignatureInvalidError("the ledger's bytes are not the ones that were signed")
    return checked.signer


def describe_signature(bundle: bytes) -> dict[str, Any]:
    """What a signature bundle claims (kind, signer, subject), without verifying anything."""
    try:
        kind, material = _material(bundle)
    except MalformedSignatureError as exc:
        return {"kind": "malformed", "error": str(exc)}
    out: dict[str, Any] = {"kind": kind}
    try:
        payload = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
        out["subject"] = payload["subject"][0]["name"]
    except (ValueError, KeyError, IndexError, TypeError):
        out["subject"] = None
    if kind == "key":
        out["signer"] = material["publicKey"].get("hint", "")
    else:
        raw = (
            material["x509CertificateChain"]["certificates"][0]["rawBytes"]
            if kind == "certificate"
            else material["certificate"]["rawBytes"]
        )
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(raw))
            out["signer"] = ", ".join(_cert_identities(cert))
            out["issuer"] = _oidc_issuer(cert) or cert.issuer.rfc4514_string()
            out["notAfter"] = cert.not_valid_after_utc.isoformat()
        except ValueError as exc:
            out["signer"] = f"unreadable certificate: {exc}"
    return out


def describe(store: Store, artifact: str) -> dict[str, Any]:
    """A package as JSON: manifest, lineage, signatures and scorecards (nothing verified)."""
    manifest = store.manifest(artifact)
    return {
        "id": manifest.id,
        "size": manifest.size,
        "digest": manifest.params.to_json(),
        "files": [f.to_json() for f in manifest.files],
        "lineage": json.loads(store.lineage(artifact).to_bytes()),
        "signatures": [
            {"name": b.name, **describe_signature(b.data)} for b in store.signatures(artifact)
        ],
        "scorecards": [
            {"name": card.name, "signed": bundle is not None}
            for card, bundle in store.scorecards(artifact)
        ],
    }
