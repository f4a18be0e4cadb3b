"""The validating admission webhook: where kopf serves it, how the API server reaches it, TLS.

kopf serves :func:`studbook.controllers.handlers.validate_descendant` and keeps the
ValidatingWebhookConfiguration :data:`CONFIGURATION` current itself. It generates certificates
only with an optional package, so a certificate comes from a mounted Secret or from
:func:`certificates` here.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from studbook.controllers.handlers import DESCENDANTS, validate_descendant

CONFIGURATION = "studbook.breeding.studbook.dev"
"""The ValidatingWebhookConfiguration kopf creates and updates."""
SERVICE_PORT = 443
"""The port of the webhook's Service, where the API server calls it."""
CERTIFICATE_DAYS = 365


@dataclass(frozen=True)
class WebhookOptions:
    """How the webhook is served and reached; exactly one of ``host`` and ``service`` is set."""

    port: int
    """The port the operator listens on."""
    host: str | None = None
    """An address the API server reaches the operator at (a URL's host), e.g. 127.0.0.1."""
    service: str | None = None
    """``namespace/name`` of a Service in front of the operator, as in the chart."""
    tls: Path | None = None
    """A directory with ``tls.crt``, ``tls.key`` and optionally ``ca.crt`` (a mounted TLS
    Secret); without it, a CA and a certificate are generated at start."""

    def names(self) -> list[str]:
        """The names the API server checks the certificate against."""
        if self.service is not None:
            namespace, name = self.service.split("/", 1)
            return [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
        return [str(self.host)]


@dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate it signed, PEM-encoded."""

    ca: bytes
    """The CA's certificate: the caBundle the API server trusts."""
    certificate: bytes
    """The server's certificate."""
    key: bytes
    """The server's private key (unencrypted PKCS#8)."""


def certificates(names: Sequence[str], now: datetime.datetime | None = None) -> Certificates:
    """A throwaway CA and a server certificate for ``names`` (DNS names or IP addresses)."""
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=CERTIFICATE_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "studbook-webhook-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Certificates(
        ca=ca.public_bytes(pem),
        certificate=certificate.public_bytes(pem),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's server, announced to the API server as a Service rather than a URL.

    The API server does not resolve cluster DNS names, so a URL cannot name a Service.
    """

    def __init__(self, *, namespace: str, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = kopf.WebhookClientConfigService(
            namespace=namespace, name=name, port=SERVICE_PORT
        )

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        """Serve as kopf does; yield client configs that name the Service."""
        async for config in super().__call__(fn):
            yield kopf.WebhookClientConfig(
                service=kopf.WebhookClientConfigService(**self.service),
                caBundle=config.get("caBundle"),
            )


def _tls_files(options: WebhookOptions) -> tuple[Path, Path, Path | None]:
    """Certificate, key and CA files: the mounted ones, or generated ones in a private directory."""
    if options.tls is not None:
        ca = options.tls / "ca.crt"
        return options.tls / "tls.crt", options.tls / "tls.key", ca if ca.exists() else None
    generated = certificates(options.names())
    directory = Path(tempfile.mkdtemp(prefix="studbook-webhook-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    # kopf loads the files, and re-reads them every minute to notice renewals.
    paths = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    for path, data in zip(paths, (generated.certificate, generated.key, generated.ca), strict=True):
        path.write_bytes(data)
    return paths


def server(options: WebhookOptions) -> kopf.WebhookServer:
    """The kopf webhook server for ``options``."""
    certfile, pkeyfile, cafile = _tls_files(options)
    tls: dict[str, Any] = {"certfile": certfile, "pkeyfile": pkeyfile, "cafile": cafile}
    if options.service is not None:
        namespace, name = options.service.split("/", 1)
        return ServiceWebhookServer(
            namespace=namespace, name=name, addr="0.0.0.0", port=options.port, **tls
        )
    return kopf.WebhookServer(addr=options.host, host=options.host, port=options.port, **tls)


def enable(settings: kopf.OperatorSettings, options: WebhookOptions) -> None:
    """Register the admission handler and serve it as ``options`` say."""
    settings.admission.server = server(options)
    settings.admission.managed = CONFIGURATION
    # The spec is immutable (a CEL rule the API server checks first), so only creation needs
    # judging. Reconciling judges again, so an unreachable webhook lets requests through; and
    # the webhook outlives a stopping replica (persistent), as another replica still serves it.
    kopf.on.validate(
        *DESCENDANTS,
        id="admission",
        operations=["CREATE"],
        ignore_failures=True,
        persistent=True,
    )(validate_descendant)
