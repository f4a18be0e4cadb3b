"""From a BreedingPolicy's trusted signers (``studbook.api``) to verification value types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from studbook.api.policy import TrustedSigner as ApiTrustedSigner
from studbook.artifacts.signing import (
    TrustedCertificateAuthority,
    TrustedKey,
    TrustedKeylessIdentity,
    TrustedSigner,
    TrustPolicy,
)


def trusted_signers(
    signers: Iterable[ApiTrustedSigner], trust_configs: Mapping[str, bytes]
) -> tuple[TrustedSigner, ...]:
    """Convert a policy's trusted signers to verification value types.

    ``trust_configs`` maps a keyless signer's ConfigMap name to its ``trust_config.json`` (the
    controller reads the ConfigMaps; this stays free of I/O).
    """
    out: list[TrustedSigner] = []
    for signer in signers:
        if signer.kind == "key" and signer.key is not None:
            out.append(TrustedKey(signer.key.public_key.encode(), signer.name))
        elif signer.kind == "certificate" and signer.certificate is not None:
            out.append(
                TrustedCertificateAuthority(
                    signer.certificate.ca_bundle.encode(), signer.certificate.san_pattern
                )
            )
        elif signer.kind == "keyless" and signer.keyless is not None:
            name = signer.keyless.trust_config_map
            if name not in trust_configs:
                raise KeyError(f"trust configuration {name!r} of signer {signer.name!r} not given")
            out.append(
                TrustedKeylessIdentity(
                    issuer=signer.keyless.issuer,
                    trust_config=trust_configs[name],
                    identity=signer.keyless.identity,
                )
            )
    return tuple(out)


def trust_policy(
    signers: Iterable[ApiTrustedSigner],
    trust_configs: Mapping[str, bytes] | None = None,
    *,
    check_parents: bool = True,
) -> TrustPolicy:
    """A :class:`TrustPolicy` from a policy's trusted signers."""
    return TrustPolicy(trusted_signers(signers, trust_configs or {}), check_parents=check_parents)
