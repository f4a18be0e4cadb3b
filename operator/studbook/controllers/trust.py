"""From a policy's trusted signers to the verifier that checks parents against them."""

from __future__ import annotations

from collections.abc import Callable

from studbook.api.policy import BreedingPolicySpec
from studbook.artifacts import (
    TrustedCertificateAuthority,
    TrustedKey,
    TrustedKeylessIdentity,
    TrustedSigner,
    TrustPolicy,
)

TRUST_CONFIG_KEY = "trust_config.json"
"""The key of a keyless signer's ConfigMap that holds the sigstore ClientTrustConfig."""


class TrustConfigMissingError(LookupError):
    """A keyless signer names a trust configuration that cannot be read."""


def trust_policy(
    policy: BreedingPolicySpec, trust_config: Callable[[str], str | None]
) -> TrustPolicy:
    """The verification policy of a BreedingPolicy; ``trust_config`` reads a ConfigMap's key."""
    signers: list[TrustedSigner] = []
    for signer in policy.trusted_signers:
        if signer.key is not None:
            signers.append(TrustedKey(public_key=signer.key.public_key.encode(), name=signer.name))
        elif signer.certificate is not None:
            signers.append(
                TrustedCertificateAuthority(
                    ca_certificates=signer.certificate.ca_bundle.encode(),
                    san_pattern=signer.certificate.san_pattern,
                )
            )
        elif signer.keyless is not None:
            config = trust_config(signer.keyless.trust_config_map)
            if config is None:
                raise TrustConfigMissingError(
                    f"signer {signer.name}: ConfigMap {signer.keyless.trust_config_map} has no"
                    f" key {TRUST_CONFIG_KEY}"
                )
            signers.append(
                TrustedKeylessIdentity(
                    issuer=signer.keyless.issuer,
                    trust_config=config.encode(),
                    identity=signer.keyless.identity,
                )
            )
    return TrustPolicy(signers=tuple(signers))
