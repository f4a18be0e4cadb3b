"""An offline sigstore (Fulcio, CT log, Rekor v1, OIDC issuer) on 127.0.0.1 for keyless tests.

``install()`` puts npm's ``@sigstore/mock`` in a cache directory outside the clone, keyed by
version (``$STUDBOOK_CACHE/npm-sigstore-mock-<version>``), so a fresh machine needs only node,
npm and the registry once. ``SigstoreStandIn`` starts ``server.js`` beside this file, which
writes the matching trust configuration, and mints tokens shaped like a Kubernetes projected
service-account token, signed with a key the stand-in trusts (the "kube-apiserver" key).

Run ``python -m tests.sigstore.stand_in`` to install (or check) the npm package.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

MOCK_VERSION = "0.13.0"
HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    base = os.environ.get("STUDBOOK_CACHE") or str(Path.home() / ".cache" / "studbook")
    return Path(base) / f"npm-sigstore-mock-{MOCK_VERSION}"


def install() -> Path:
    """Install @sigstore/mock once per version; return its node_modules directory."""
    target = cache_dir()
    modules = target / "node_modules"
    marker = target / ".complete"
    if marker.exists():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install @sigstore/mock")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return modules
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        (staging / "package.json").write_text('{"private": true}\n')
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--engine-strict=false",
                f"@sigstore/mock@{MOCK_VERSION}",
            ],
            cwd=staging,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (staging / ".complete").write_text(MOCK_VERSION + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return modules


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigstoreStandIn:
    """The running stand-in: ``url``, ``issuer``, ``trust_config`` and ``token()``.

    By default it is its own OIDC issuer and mints tokens itself. Given ``issuer`` and ``jwks``
    (a test cluster's service-account issuer and its keys, from ``/openid/v1/jwks``), its Fulcio
    certifies that cluster's projected tokens instead, and it mints none.
    """

    def __init__(
        self, workdir: Path, *, issuer: str | None = None, jwks: dict[str, Any] | None = None
    ) -> None:
        if (issuer is None) != (jwks is None):
            raise ValueError("give both issuer and jwks, or neither")
        self.workdir = workdir
        self.trust_config = workdir / "trust_config.json"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = uuid.uuid4().hex
        numbers = self._key.public_key().public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "kid": self._kid,
            "alg": "ES256",
            "use": "sig",
        }
        self._issuer = issuer
        self._jwks = workdir / "jwks.json"
        self._jwks.write_text(json.dumps(jwks or {"keys": [jwk]}))
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self.url = ""
        self.issuer = ""

    def __enter__(self) -> SigstoreStandIn:
        modules = install()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed to run the sigstore stand-in")
        self._log = open(self.workdir / "server.log", "w")
        self._proc = subprocess.Popen(
            [
                node,
                str(HERE / "server.js"),
                "--node-modules",
                str(modules),
                "--jwks",
                str(self._jwks),
                "--trust-config",
                str(self.trust_config),
                *(["--issuer", self._issuer] if self._issuer else []),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            log = (self.workdir / "server.log").read_text()
            raise RuntimeError(f"sigstore stand-in did not start: {log}")
        info = json.loads(line)
        self.url, self.issuer = info["url"], info["issuer"]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        audience: str = "sigstore",
        ttl: int = 600,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        """A token shaped like a projected service-account token (audience ``sigstore``)."""
        if self._issuer is not None:
            raise RuntimeError("this stand-in certifies another issuer's tokens; it mints none")
        now = int(time.time())
        claims = {
            "aud": [audience],
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": f"{service_account}-signer", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            },
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        header = {"alg": "ES256", "kid": self._kid, "typ": "JWT"}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = (signing_key or self._key).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def identity(self, namespace: str, service_account: str) -> str:
        """The SAN the stand-in's Fulcio writes for a service account."""
        return f"https://kubernetes.io/namespaces/{namespace}/serviceaccounts/{service_account}"


if __name__ == "__main__":
    print(install())
