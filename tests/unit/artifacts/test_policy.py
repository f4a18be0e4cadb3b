from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from studbook.api.policy import TrustedSigner as ApiTrustedSigner
from studbook.artifacts import KeySigner, Store, Verifier, sign_artifact
from studbook.artifacts.policy import trust_policy
from studbook.artifacts.signing import TrustedCertificateAuthority, TrustedKeylessIdentity

from .conftest import lineage
from .pki import CA, KeyPair


def test_a_policy_from_the_api_verifies(
    store: Store, model_dir: Callable[..., Path], key: KeyPair, ca: CA
) -> None:
    signers = [
        ApiTrustedSigner.model_validate(
            {"name": "ci", "kind": "key", "key": {"publicKey": key.public_pem.decode()}}
        ),
        ApiTrustedSigner.model_validate(
            {
                "name": "pki",
                "kind": "certificate",
                "certificate": {"caBundle": ca.pem.decode(), "sanPattern": "spiffe://.+"},
            }
        ),
        ApiTrustedSigner.model_validate(
            {
                "name": "sigstore",
                "kind": "keyless",
                "keyless": {
                    "identity": "https://kubernetes.io/namespaces/ml/serviceaccounts/signer",
                    "issuer": "https://kubernetes.default.svc",
                    "trustConfigMap": "sigstore-trust",
                },
            }
        ),
    ]
    policy = trust_policy(signers, {"sigstore-trust": b"{}"})
    assert isinstance(policy.signers[1], TrustedCertificateAuthority)
    assert isinstance(policy.signers[2], TrustedKeylessIdentity)
    artifact = store.seal(model_dir(), lineage()).id
    sign_artifact(store, artifact, KeySigner(key.private_path))
    assert Verifier(store, policy).verify(artifact).signer.subject == "ci"
