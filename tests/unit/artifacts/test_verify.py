"""Every way a package or scorecard is refused: its own error, and nothing stored is touched."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from studbook.artifacts import (
    CertificateSigner,
    KeySigner,
    Store,
    TrustedCertificateAuthority,
    TrustedKey,
    TrustPolicy,
    Verifier,
    sign_artifact,
    sign_scorecard,
)
from studbook.artifacts import errors as E
from studbook.artifacts.signing import describe

from .conftest import lineage
from .pki import CA, KeyPair, new_key

SAN = "spiffe://studbook.dev/ns/breeding/sa/signer"
SAN_PATTERN = r"spiffe://studbook\.dev/ns/breeding/sa/.+"


def snapshot(store: Store) -> dict[str, tuple[int, int, str]]:
    out = {}
    for path in sorted(Path(store.root).rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path)] = (st.st_mode, st.st_mtime_ns, digest)
    return out


@pytest.fixture
def untouched(store: Store) -> Iterator[Callable[[], None]]:
    """Call it after tampering: verification must leave the store exactly as it found it."""
    state: dict[str, dict[str, tuple[int, int, str]]] = {}

    def mark() -> None:
        state["before"] = snapshot(store)

    yield mark
    if "before" in state:
        assert snapshot(store) == state["before"]


def writable(path: Path) -> Path:
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path


@pytest.fixture
def signed(store: Store, model_dir: Callable[..., Path], key: KeyPair) -> str:
    manifest = store.seal(model_dir(), lineage())
    sign_artifact(store, manifest.id, KeySigner(key.private_path))
    return manifest.id


@pytest.fixture
def policy(key: KeyPair) -> TrustPolicy:
    return TrustPolicy((TrustedKey(key.public_pem, "breeding-ci"),))


def files_dir(store: Store, artifact: str) -> Path:
    return Path(store.package_path(artifact)) / "files"


def _ca_verifier(store: Store, ca: CA) -> Verifier:
    """A verifier trusting ``ca`` for signers whose SAN matches the test pattern."""
    return Verifier(store, TrustPolicy((TrustedCertificateAuthority(ca.pem, SAN_PATTERN),)))


def test_a_signed_package_verifies(store: Store, signed: str, policy: TrustPolicy) -> None:
    result = Verifier(store, policy).verify(signed)
    assert result.id == signed
    assert result.signer.kind == "key"
    assert result.signer.subject == "breeding-ci"
    assert result.lineage == lineage()


def test_signatures_are_model_signing_compatible(store: Store, signed: str, key: KeyPair) -> None:
    from model_signing import hashing, verifying

    pub = Path(store.root).parent / "pub.pem"
    pub.write_bytes(key.public_pem)
    sig = Path(store.root).parent / "copy.sig"
    sig.write_bytes(store.signatures(signed)[0].data)
    config = verifying.Config().use_elliptic_key_verifier(public_key=pub)
    config.set_hashing_config(hashing.Config().use_shard_serialization(shard_size=64 * 1024 * 1024))
    config.verify(files_dir(store, signed), sig)


def test_flipped_byte(
    store: Store, signed: str, policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    path = writable(files_dir(store, signed) / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    untouched()
    with pytest.raises(E.ContentMismatchError, match=r"model\.safetensors"):
        Verifier(store, policy).verify(signed)


def test_renamed_file(
    store: Store, signed: str, policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    base = files_dir(store, signed)
    base.chmod(0o755)
    os.rename(base / "config.json", base / "config.yaml")
    untouched()
    with pytest.raises(E.RenamedFileError, match=r"config.json was renamed to config.yaml"):
        Verifier(store, policy).verify(signed)


def test_extra_file(
    store: Store, signed: str, policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    base = files_dir(store, signed)
    base.chmod(0o755)
    (base / "backdoor.py").write_text("import os\n")
    untouched()
    with pytest.raises(E.ExtraFileError, match=r"backdoor\.py"):
        Verifier(store, policy).verify(signed)


def test_missing_file(
    store: Store, signed: str, policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    writable(files_dir(store, signed) / "tokenizer" / "vocab.txt").unlink()
    untouched()
    with pytest.raises(E.MissingFileError, match=r"tokenizer/vocab\.txt"):
        Verifier(store, policy).verify(signed)


def test_unsigned(
    store: Store, model_dir: Callable[..., Path], policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    artifact = store.seal(model_dir(seed=3), lineage()).id
    untouched()
    with pytest.raises(E.UnsignedArtifactError):
        Verifier(store, policy).verify(artifact)


def test_wrong_key(
    store: Store, signed: str, other_key: KeyPair, untouched: Callable[[], None]
) -> None:
    untouched()
    with pytest.raises(E.WrongKeyError, match="not a trusted key"):
        Verifier(store, TrustPolicy((TrustedKey(other_key.public_pem, "other"),))).verify(signed)


def test_forged_signature_bytes(
    store: Store, signed: str, policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    blob = store.signatures(signed)[0]
    path = writable(Path(store.package_path(signed)) / "signatures" / blob.name)
    bundle = json.loads(blob.data)
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = "MEUCIQ" + "A" * 90
    path.write_text(json.dumps(bundle))
    untouched()
    with pytest.raises(E.SignatureInvalidError):
        Verifier(store, policy).verify(signed)


def test_truncated_signature(
    store: Store, signed: str, policy: TrustPolicy, untouched: Callable[[], None]
) -> None:
    blob = store.signatures(signed)[0]
    path = writable(Path(store.package_path(signed)) / "signatures" / blob.name)
    path.write_bytes(blob.data[: len(blob.data) // 2])
    untouched()
    with pytest.raises(E.MalformedSignatureError):
        Verifier(store, policy).verify(signed)


def test_foreign_signature(
    store: Store,
    signed: str,
    model_dir: Callable[..., Path],
    key: KeyPair,
    policy: TrustPolicy,
    untouched: Callable[[], None],
) -> None:
    # A valid signature, by the trusted key, of another artifact, copied next to this one.
    other = store.seal(model_dir(seed=5), lineage()).id
    sign_artifact(store, other, KeySigner(key.private_path))
    sigdir = Path(store.package_path(signed)) / "signatures"
    for blob in store.signatures(signed):
        writable(sigdir / blob.name).unlink()
    foreign = store.signatures(other)[0]
    (sigdir / foreign.name).write_bytes(foreign.data)
    untouched()
    with pytest.raises(E.SignatureSubjectError, match="foreign"):
        Verifier(store, policy).verify(signed)


@pytest.fixture
def ca_files(ca: CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.pem)
    return path


def sign_with_cert(
    store: Store, artifact: str, ca: CA, ca_files: Path, san: str, **validity: dt.datetime
) -> None:
    key_path, cert_path = ca.issue(f"leaf-{len(list(ca.directory.iterdir()))}", san, **validity)
    sign_artifact(store, artifact, CertificateSigner(key_path, cert_path, (ca_files,)))


def test_certificate_chain_and_san(
    store: Store, model_dir: Callable[..., Path], ca: CA, ca_files: Path
) -> None:
    artifact = store.seal(model_dir(), lineage()).id
    sign_with_cert(store, artifact, ca, ca_files, SAN)
    result = _ca_verifier(store, ca).verify(artifact)
    assert result.signer.kind == "certificate"
    assert result.signer.subject == SAN


def test_wrong_san(
    store: Store,
    model_dir: Callable[..., Path],
    ca: CA,
    ca_files: Path,
    untouched: Callable[[], None],
) -> None:
    artifact = store.seal(model_dir(), lineage()).id
    sign_with_cert(store, artifact, ca, ca_files, "spiffe://studbook.dev/ns/playground/sa/intern")
    untouched()
    with pytest.raises(E.SignerIdentityError, match="playground"):
        _ca_verifier(store, ca).verify(artifact)


def test_expired_certificate(
    store: Store,
    model_dir: Callable[..., Path],
    ca: CA,
    ca_files: Path,
    untouched: Callable[[], None],
) -> None:
    artifact = store.seal(model_dir(), lineage()).id
    now = dt.datetime.now(dt.UTC)
    sign_with_cert(
        store,
        artifact,
        ca,
        ca_files,
        SAN,
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    untouched()
    with pytest.raises(E.CertificateExpiredError, match="expired"):
        _ca_verifier(store, ca).verify(artifact)


def test_certificate_from_another_ca(
    store: Store,
    model_dir: Callable[..., Path],
    ca: CA,
    tmp_path: Path,
    untouched: Callable[[], None],
) -> None:
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue = CA.create(rogue_dir, "Rogue Root")
    rogue_pem = rogue_dir / "ca.pem"
    rogue_pem.write_bytes(rogue.pem)
    artifact = store.seal(model_dir(), lineage()).id
    sign_with_cert(store, artifact, rogue, rogue_pem, SAN)
    untouched()
    with pytest.raises(E.UntrustedCertificateError):
        _ca_verifier(store, ca).verify(artifact)


def test_a_key_signature_is_not_accepted_by_a_ca_policy(store: Store, signed: str, ca: CA) -> None:
    with pytest.raises(E.WrongKeyError):
        _ca_verifier(store, ca).verify(signed)


def test_parents_are_verified_recursively_and_cached(
    store: Store, model_dir: Callable[..., Path], key: KeyPair, policy: TrustPolicy
) -> None:
    signer = KeySigner(key.private_path)
    a = store.seal(model_dir(seed=1), lineage()).id
    b = store.seal(model_dir(seed=2), lineage()).id
    sign_artifact(store, a, signer)
    sign_artifact(store, b, signer)
    child = store.seal(model_dir(seed=3), lineage(a, b, operator="merge")).id
    sign_artifact(store, child, signer)
    grandchild = store.seal(model_dir(seed=4), lineage(child, a, operator="lora")).id
    sign_artifact(store, grandchild, signer)
    verifier = Verifier(store, policy)
    result = verifier.verify(grandchild)
    assert [p.id for p in result.parents] == [child, a]
    assert {x.id for x in result.ancestors()} == {child, a, b}
    # The shared grandparent was verified once and reused.
    assert result.parents[0].parents[0] is result.parents[1]


def test_an_unsigned_parent_refuses_the_child(
    store: Store, model_dir: Callable[..., Path], key: KeyPair, policy: TrustPolicy
) -> None:
    parent = store.seal(model_dir(seed=1), lineage()).id
    child = store.seal(model_dir(seed=2), lineage(parent, operator="lora")).id
    sign_artifact(store, child, KeySigner(key.private_path))
    with pytest.raises(E.ParentVerificationError) as info:
        Verifier(store, policy).verify(child)
    assert isinstance(info.value.cause, E.UnsignedArtifactError)
    Verifier(store, TrustPolicy(policy.signers, check_parents=False)).verify(child)


def test_a_missing_parent_refuses_the_child(
    store: Store, model_dir: Callable[..., Path], key: KeyPair, policy: TrustPolicy
) -> None:
    child = store.seal(model_dir(seed=2), lineage("sha256:" + "e" * 64, operator="lora")).id
    sign_artifact(store, child, KeySigner(key.private_path))
    with pytest.raises(E.ParentVerificationError) as info:
        Verifier(store, policy).verify(child)
    assert isinstance(info.value.cause, E.ArtifactNotFoundError)


def test_signing_refuses_a_tampered_package(
    store: Store, model_dir: Callable[..., Path], key: KeyPair
) -> None:
    artifact = store.seal(model_dir(), lineage()).id
    writable(files_dir(store, artifact) / "config.json").write_text("{}")
    with pytest.raises(E.ContentMismatchError):
        sign_artifact(store, artifact, KeySigner(key.private_path))
    assert store.signatures(artifact) == []


def scorecard(subject: str) -> bytes:
    return json.dumps({"subject": subject, "suite": "core@1", "verdict": "pass"}).encode()


def test_scorecards_are_signed_separately_and_leave_the_id_alone(
    store: Store, signed: str, key: KeyPair, policy: TrustPolicy
) -> None:
    before = store.manifest(signed)
    sign_scorecard(store, signed, scorecard(signed), KeySigner(key.private_path))
    assert store.manifest(signed) == before
    verifier = Verifier(store, policy)
    verifier.verify(signed)
    (card,) = verifier.verify_scorecards(signed)
    assert card.subject == signed and card.data["verdict"] == "pass"
    assert describe(store, signed)["scorecards"][0]["signed"]


def test_a_scorecard_about_another_artifact(
    store: Store,
    signed: str,
    model_dir: Callable[..., Path],
    key: KeyPair,
    policy: TrustPolicy,
    untouched: Callable[[], None],
) -> None:
    other = store.seal(model_dir(seed=8), lineage()).id
    with pytest.raises(E.ScorecardSubjectError):
        sign_scorecard(store, signed, scorecard(other), KeySigner(key.private_path))
    # A properly signed scorecard of `other`, copied beside `signed`.
    sign_scorecard(store, other, scorecard(other), KeySigner(key.private_path))
    src = Path(store.package_path(other)) / "scorecards"
    dst = Path(store.package_path(signed)) / "scorecards"
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    untouched()
    with pytest.raises(E.ScorecardSubjectError, match="about"):
        Verifier(store, policy).verify_scorecards(signed)


def test_a_scorecard_whose_signature_names_another_artifact(
    store: Store, signed: str, model_dir: Callable[..., Path], key: KeyPair, policy: TrustPolicy
) -> None:
    # The scorecard's text is edited to claim `signed`, but the signature speaks for `other`.
    other = store.seal(model_dir(seed=8), lineage()).id
    sign_scorecard(store, other, scorecard(other), KeySigner(key.private_path))
    (_card, bundle) = store.scorecards(other)[0]
    assert bundle is not None
    from studbook.artifacts import verify_scorecard

    with pytest.raises(E.ScorecardSubjectError):
        verify_scorecard(signed, scorecard(signed), bundle.data, policy)
    with pytest.raises(E.ScorecardError):
        verify_scorecard(other, scorecard(other).replace(b"pass", b"fail"), bundle.data, policy)


def test_p384_keys_sign_too(store: Store, model_dir: Callable[..., Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    k = new_key(tmp_path, "p384", ec.SECP384R1())
    artifact = store.seal(model_dir(), lineage()).id
    sign_artifact(store, artifact, KeySigner(k.private_path))
    Verifier(store, TrustPolicy((TrustedKey(k.public_pem),))).verify(artifact)


def test_plain_sha256_packages_sign_and_verify_and_stock_model_signing_agrees(
    store: Store, model_dir: Callable[..., Path], key: KeyPair, policy: TrustPolicy
) -> None:
    from model_signing import verifying

    from studbook.artifacts import DigestParams

    params = DigestParams(file_digest="sha256")
    manifest = store.seal(model_dir(seed=11), lineage(), params=params)
    assert store.manifest(manifest.id).params == params
    sign_artifact(store, manifest.id, KeySigner(key.private_path))
    Verifier(store, policy).verify(manifest.id)
    pub = Path(store.root).parent / "pub.pem"
    pub.write_bytes(key.public_pem)
    sig = Path(store.root).parent / "plain.sig"
    sig.write_bytes(store.signatures(manifest.id)[0].data)
    verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
        files_dir(store, manifest.id), sig
    )
    writable(files_dir(store, manifest.id) / "config.json").write_text("{}")
    with pytest.raises(E.ContentMismatchError):
        Verifier(store, policy).verify(manifest.id)
