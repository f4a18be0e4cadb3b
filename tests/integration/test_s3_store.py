"""The store over S3 (s3fs) against moto's S3 server on 127.0.0.1: a real HTTP S3 endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from studbook.artifacts import (
    KeySigner,
    Lineage,
    Store,
    TrustedKey,
    TrustPolicy,
    Verifier,
    sign_artifact,
    sign_scorecard,
)
from studbook.artifacts import errors as E

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "studbook-artifacts"


def lineage(*parents: str) -> Lineage:
    return Lineage(
        parents=parents,
        operator="lora" if parents else "import",
        config_hash="sha256:" + "0" * 64,
        code_version="test",
    )


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def s3(endpoint: str, request: pytest.FixtureRequest) -> Store:
    prefix = request.node.name.replace("[", "-").replace("]", "")
    return Store.open(
        f"s3://{BUCKET}/{prefix}",
        key="testing",
        secret="testing",
        endpoint_url=endpoint,
        client_kwargs={"region_name": "us-east-1"},
        skip_instance_cache=True,
    )


def model(tmp_path: Path, seed: int = 0) -> Path:
    d = tmp_path / f"model-{seed}"
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes(bytes([seed]) * 200_000)
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    (d / "tokenizer").mkdir(exist_ok=True)
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (d / "tokenizer" / "added_tokens.txt").write_bytes(b"")
    return d


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.pem"
    path.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, pub


def test_seal_sign_verify_over_s3(s3: Store, tmp_path: Path, key: tuple[Path, bytes]) -> None:
    local = Store.open(tmp_path / "local")
    manifest = s3.seal(model(tmp_path), lineage())
    # Same content, same id, on any store.
    assert local.seal(model(tmp_path), lineage()).id == manifest.id
    assert s3.ids() == [manifest.id]
    assert s3.seal(model(tmp_path), lineage()) == manifest
    assert s3.lineage(manifest.id) == lineage()

    signer = KeySigner(key[0])
    sign_artifact(s3, manifest.id, signer)
    child = s3.seal(model(tmp_path, 1), lineage(manifest.id)).id
    sign_artifact(s3, child, signer)
    card = json.dumps({"subject": child, "verdict": "pass"}).encode()
    sign_scorecard(s3, child, card, signer)
    verifier = Verifier(s3, TrustPolicy((TrustedKey(key[1]),)))
    assert verifier.verify(child).parents[0].id == manifest.id
    assert verifier.verify_scorecards(child)[0].subject == child

    out = s3.fetch(child, tmp_path / "fetched")
    assert out.id == child
    assert (tmp_path / "fetched" / "config.json").read_text() == '{"seed": 1}'


def test_tampering_in_the_bucket_is_refused(
    s3: Store, tmp_path: Path, key: tuple[Path, bytes]
) -> None:
    artifact = s3.seal(model(tmp_path), lineage()).id
    sign_artifact(s3, artifact, KeySigner(key[0]))
    policy = TrustPolicy((TrustedKey(key[1]),))
    files = f"{s3.package_path(artifact)}/files"

    original = s3.fs.cat_file(f"{files}/model.safetensors")
    s3.fs.pipe_file(f"{files}/model.safetensors", b"\x01" + original[1:])
    with pytest.raises(E.ContentMismatchError):
        Verifier(s3, policy).verify(artifact)
    with pytest.raises(E.ContentMismatchError):
        s3.read_file(artifact, "model.safetensors")
    s3.fs.pipe_file(f"{files}/model.safetensors", original)

    s3.fs.pipe_file(f"{files}/extra.bin", b"hello")
    with pytest.raises(E.ExtraFileError):
        Verifier(s3, policy).verify(artifact)
    s3.fs.rm_file(f"{files}/extra.bin")
    Verifier(s3, policy).verify(artifact)


def test_an_interrupted_upload_is_invisible(s3: Store, tmp_path: Path) -> None:
    # A sealer that died after uploading files but before the manifest left no package.
    src = model(tmp_path, 3)
    manifest = Store.open(tmp_path / "local").seal(src, lineage())
    files = f"{s3.package_path(manifest.id)}/files"
    s3.fs.put_file(str(src / "model.safetensors"), f"{files}/model.safetensors")
    assert s3.ids() == []
    assert not s3.exists(manifest.id)
    assert s3.seal(src, lineage()).id == manifest.id
    assert s3.ids() == [manifest.id]
    s3.check_files(manifest.id)


def test_concurrent_sealing_to_s3(s3: Store, tmp_path: Path) -> None:
    sources = []
    for i in range(4):
        (tmp_path / str(i)).mkdir()
        sources.append(model(tmp_path / str(i), 4))
    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(lambda s: s3.seal(s, lineage()).id, sources))
    assert len(ids) == 1
    assert s3.ids() == list(ids)
    s3.check_files(ids.pop())
