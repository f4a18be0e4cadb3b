"""Sigstore keyless signing against the offline stand-in (Fulcio, CT log, Rekor) on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.sigstore.stand_in import SigstoreStandIn

from studbook.artifacts import (
    KeylessSigner,
    Store,
    TrustedKeylessIdentity,
    TrustPolicy,
    Verifier,
    sign_artifact,
)
from studbook.artifacts import errors as E

from .conftest import lineage

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="the sigstore stand-in needs node and npm",
)

NS, SA = "breeding", "studbook-signer"


@pytest.fixture(scope="module")
def sigstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigstoreStandIn]:
    with SigstoreStandIn(tmp_path_factory.mktemp("sigstore")) as stand_in:
        yield stand_in


def trust(
    sigstore: SigstoreStandIn, identity: str | None = None, pattern: str | None = None
) -> TrustPolicy:
    return TrustPolicy(
        (
            TrustedKeylessIdentity(
                issuer=sigstore.issuer,
                trust_config=sigstore.trust_config.read_bytes(),
                identity=identity,
                identity_pattern=pattern,
            ),
        )
    )


@pytest.fixture
def token_file(tmp_path: Path, sigstore: SigstoreStandIn) -> Callable[..., Path]:
    def make(namespace: str = NS, service_account: str = SA, **kw: object) -> Path:
        path = tmp_path / f"token-{namespace}-{service_account}"
        path.write_text(sigstore.token(namespace, service_account, **kw))  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture
def keyless_signed(
    store: Store,
    model_dir: Callable[..., Path],
    sigstore: SigstoreStandIn,
    token_file: Callable[..., Path],
) -> str:
    artifact = store.seal(model_dir(), lineage()).id
    signer = KeylessSigner(trust_config=sigstore.trust_config, token_path=token_file())
    sign_artifact(store, artifact, signer)
    return artifact


def test_keyless_sign_and_verify(
    store: Store, keyless_signed: str, sigstore: SigstoreStandIn
) -> None:
    result = Verifier(store, trust(sigstore, identity=sigstore.identity(NS, SA))).verify(
        keyless_signed
    )
    assert result.signer.kind == "keyless"
    assert result.signer.subject == f"https://kubernetes.io/namespaces/{NS}/serviceaccounts/{SA}"
    assert result.signer.issuer == sigstore.issuer


def test_identity_pattern(store: Store, keyless_signed: str, sigstore: SigstoreStandIn) -> None:
    pattern = r"https://kubernetes\.io/namespaces/breeding/serviceaccounts/.+"
    Verifier(store, trust(sigstore, pattern=pattern)).verify(keyless_signed)


def test_wrong_service_account_is_refused(
    store: Store,
    model_dir: Callable[..., Path],
    sigstore: SigstoreStandIn,
    token_file: Callable[..., Path],
) -> None:
    artifact = store.seal(model_dir(seed=2), lineage()).id
    signer = KeylessSigner(
        trust_config=sigstore.trust_config, token_path=token_file(service_account="default")
    )
    sign_artifact(store, artifact, signer)
    with pytest.raises(E.SignerIdentityError, match="serviceaccounts/default"):
        Verifier(store, trust(sigstore, identity=sigstore.identity(NS, SA))).verify(artifact)


def test_wrong_issuer_is_refused(
    store: Store, keyless_signed: str, sigstore: SigstoreStandIn
) -> None:
    policy = TrustPolicy(
        (
            TrustedKeylessIdentity(
                issuer="https://kubernetes.default.svc",
                trust_config=sigstore.trust_config.read_bytes(),
                identity=sigstore.identity(NS, SA),
            ),
        )
    )
    with pytest.raises(E.SignerIdentityError):
        Verifier(store, policy).verify(keyless_signed)


def test_another_sigstore_root_is_refused(
    store: Store, keyless_signed: str, sigstore: SigstoreStandIn, tmp_path: Path
) -> None:
    # Right identity and issuer, but the trust configuration of another sigstore instance.
    (tmp_path / "other").mkdir()
    with SigstoreStandIn(tmp_path / "other") as other:
        policy = TrustPolicy(
            (
                TrustedKeylessIdentity(
                    issuer=sigstore.issuer,
                    trust_config=other.trust_config.read_bytes(),
                    identity=sigstore.identity(NS, SA),
                ),
            )
        )
        with pytest.raises(E.SignatureInvalidError):
            Verifier(store, policy).verify(keyless_signed)


def test_a_token_from_an_untrusted_key_cannot_sign(
    store: Store,
    model_dir: Callable[..., Path],
    sigstore: SigstoreStandIn,
    token_file: Callable[..., Path],
) -> None:
    artifact = store.seal(model_dir(seed=3), lineage()).id
    forged = token_file(signing_key=ec.generate_private_key(ec.SECP256R1()))
    signer = KeylessSigner(trust_config=sigstore.trust_config, token_path=forged)
    with pytest.raises(E.SigningError):
        sign_artifact(store, artifact, signer)
    assert store.signatures(artifact) == []


def test_keyless_through_the_cli(
    tmp_path: Path,
    model_dir: Callable[..., Path],
    sigstore: SigstoreStandIn,
    token_file: Callable[..., Path],
) -> None:
    from typer.testing import CliRunner

    from studbook.cli import app

    runner = CliRunner()
    store = str(tmp_path / "cli-store")
    result = runner.invoke(app, ["seal", str(model_dir(seed=9)), "-s", store])
    assert result.exit_code == 0, result.output
    artifact = result.output.strip()
    sign = ["sign", artifact, "-s", store, "--keyless"]
    sign += ["--trust-config", str(sigstore.trust_config), "--token-file", str(token_file())]
    result = runner.invoke(app, sign)
    assert result.exit_code == 0, result.output
    verify = ["verify", artifact, "-s", store, "--oidc-issuer", sigstore.issuer]
    verify += ["--trust-config", str(sigstore.trust_config)]
    result = runner.invoke(app, [*verify, "--identity", sigstore.identity(NS, SA)])
    assert result.exit_code == 0, result.output
    assert f"keyless:{sigstore.identity(NS, SA)}" in result.output
    result = runner.invoke(app, [*verify, "--identity", sigstore.identity(NS, "default")])
    assert result.exit_code == 1
    assert "SignerNotTrusted" in result.output
