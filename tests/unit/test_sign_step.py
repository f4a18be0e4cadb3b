"""The sign step a sign Job runs: re-hash, sign artifact and scorecard, write the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.keys import ec_key
from tests.sigstore.stand_in import SigstoreStandIn

from studbook.api.task import SignResultFile, SignTask
from studbook.artifacts import (
    Lineage,
    Store,
    TrustedKey,
    TrustedKeylessIdentity,
    TrustPolicy,
    Verifier,
)
from studbook.artifacts.errors import ContentMismatchError
from studbook.local.steps import run_sign, signer_from_dir


def _key_dir(tmp_path: Path) -> tuple[Path, bytes]:
    public = ec_key(tmp_path / "signing" / "key.pem")
    return tmp_path / "signing", public.encode()


def _sealed(tmp_path: Path) -> tuple[Store, str]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 4096)
    (model / "config.json").write_text('{"architectures": ["BertModel"]}')
    store = Store.open(tmp_path / "store")
    lineage = Lineage(
        operator="import",
        config_hash="sha256:" + "0" * 64,
        code_version="0.1.0",
    )
    return store, store.seal(model, lineage).id


def _task(tmp_path: Path, store: Store, artifact: str, subject: str) -> SignTask:
    card = tmp_path / "scorecard.json"
    card.write_text(json.dumps({"subject": subject, "verdict": "pass"}))
    return SignTask(
        descendant="ml/minilm-base",
        artifact_id=artifact,
        scorecard_uri=str(card),
        store=str(tmp_path / "store"),
        result=str(tmp_path / "store" / "runs" / "ml" / "minilm-base" / "sign-1.json"),
    )


def test_sign_step_signs_artifact_and_scorecard(tmp_path: Path) -> None:
    store, artifact = _sealed(tmp_path)
    keys, public = _key_dir(tmp_path)
    signer, identity = signer_from_dir(keys)
    task = _task(tmp_path, store, artifact, artifact)
    result = run_sign(task, signer, identity)
    assert identity is not None and identity.startswith("key:")
    assert result.signer == identity
    written = SignResultFile.model_validate_json(Path(task.result).read_bytes())
    assert written == result
    trust = TrustPolicy(signers=(TrustedKey(public_key=public),))
    verified = Verifier(store, trust).verify(artifact)
    assert verified.id == artifact
    assert len(Verifier(store, trust).verify_scorecards(artifact)) == 1


def test_sign_step_refuses_a_tampered_artifact_and_writes_no_result(tmp_path: Path) -> None:
    store, artifact = _sealed(tmp_path)
    keys, _ = _key_dir(tmp_path)
    stored = Path(store.package_path(artifact)) / "files" / "model.safetensors"
    stored.chmod(0o644)
    stored.write_bytes(b"\x01" * 4096)
    task = _task(tmp_path, store, artifact, artifact)
    with pytest.raises(ContentMismatchError):
        run_sign(task, *signer_from_dir(keys))
    assert not Path(task.result).exists()
    assert store.signatures(artifact) == []


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="the sigstore stand-in needs node and npm",
)
def test_a_keyless_sign_step_names_the_identity_fulcio_certified(tmp_path: Path) -> None:
    """Trust configuration and projected token side by side, as the chart mounts them."""
    store, artifact = _sealed(tmp_path)
    (tmp_path / "sigstore").mkdir()
    with SigstoreStandIn(tmp_path / "sigstore") as sigstore:
        signing = tmp_path / "signing"
        signing.mkdir()
        shutil.copy(sigstore.trust_config, signing / "trust_config.json")
        (signing / "token").write_text(sigstore.token("studbook-system", "studbook"))
        signer, identity = signer_from_dir(signing)
        assert identity is None, "a keyless identity is known once certified"
        result = run_sign(_task(tmp_path, store, artifact, artifact), signer, identity)
        operator = sigstore.identity("studbook-system", "studbook")
        assert result.signer == operator
        trust = TrustPolicy(
            (
                TrustedKeylessIdentity(
                    issuer=sigstore.issuer,
                    trust_config=sigstore.trust_config.read_bytes(),
                    identity=operator,
                ),
            )
        )
        assert Verifier(store, trust).verify(artifact).signer.subject == operator
