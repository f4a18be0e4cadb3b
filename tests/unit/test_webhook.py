"""The webhook's certificates: what the API server checks of them."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from cryptography import x509

from studbook.controllers.webhook import WebhookOptions, certificates


def test_the_certificate_names_the_service_and_chains_to_the_ca(tmp_path: Path) -> None:
    names = WebhookOptions(9443, service="breeding/studbook-webhook").names()
    generated = certificates(names)
    cert = x509.load_pem_x509_certificate(generated.certificate)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "studbook-webhook.breeding.svc",
        "studbook-webhook.breeding.svc.cluster.local",
    ]
    ca = x509.load_pem_x509_certificate(generated.ca)
    cert.verify_directly_issued_by(ca)
    # The pair loads as a server's: the key belongs to the certificate.
    (tmp_path / "tls.crt").write_bytes(generated.certificate)
    (tmp_path / "tls.key").write_bytes(generated.key)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        tmp_path / "tls.crt", tmp_path / "tls.key"
    )


def test_an_address_becomes_an_ip_san() -> None:
    generated = certificates(WebhookOptions(9443, host="127.0.0.1").names())
    cert = x509.load_pem_x509_certificate(generated.certificate)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
