from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from studbook.artifacts import Store
from studbook.artifacts.errors import (
    ArtifactIdMismatchError,
    ArtifactNotFoundError,
    ContentMismatchError,
    PackageFormatError,
)
from studbook.artifacts.package import LINEAGE_FILE, MANIFEST_FILE

from .conftest import lineage

REPO = Path(__file__).resolve().parents[3]


def visible_packages(store: Store) -> list[str]:
    return store.ids()


def test_seal_records_lineage_manifest_and_parameters(
    store: Store, model_dir: Callable[..., Path]
) -> None:
    manifest = store.seal(model_dir(), lineage())
    pkg = Path(store.package_path(manifest.id))
    data = json.loads((pkg / MANIFEST_FILE).read_bytes())
    assert data["id"] == manifest.id
    assert data["digest"] == {
        "algorithm": "sha256",
        "canonicalization": "rfc8785",
        "fileDigest": "sha256-shard-tree",
        "layout": "studbook.dev/package/v1",
        "shardSize": 64 * 1024 * 1024,
    }
    assert [f["path"] for f in data["files"]] == [
        "config.json",
        LINEAGE_FILE,
        "model.safetensors",
        "tokenizer/vocab.txt",
    ]
    assert store.lineage(manifest.id) == lineage()
    raw = json.loads(store.read_file(manifest.id, LINEAGE_FILE))
    # Inputs only: no time, so sealing the same inputs again gives the same id.
    assert set(raw) == {"parents", "operator", "configHash", "datasetDigests", "codeVersion"}


def test_sealed_packages_are_read_only(store: Store, model_dir: Callable[..., Path]) -> None:
    manifest = store.seal(model_dir(), lineage())
    pkg = Path(store.package_path(manifest.id))
    for path in [*(pkg / "files").rglob("*"), pkg / "files", pkg / MANIFEST_FILE]:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path


def test_same_content_twice_gives_the_same_id_and_is_stored_once(
    store: Store, model_dir: Callable[..., Path]
) -> None:
    first = store.seal(model_dir(seed=1), lineage())
    pkg = Path(store.package_path(first.id))
    before = (pkg / MANIFEST_FILE).stat().st_mtime_ns
    second = store.seal(model_dir(seed=1), lineage())
    assert first == second
    assert store.ids() == [first.id]
    assert (pkg / MANIFEST_FILE).stat().st_mtime_ns == before
    assert not any((Path(store.root) / ".tmp").iterdir())


def test_different_lineage_gives_a_different_id(
    store: Store, model_dir: Callable[..., Path]
) -> None:
    a = store.seal(model_dir(seed=1), lineage())
    b = store.seal(model_dir(seed=1), lineage(a.id, operator="lora"))
    assert a.id != b.id


def test_a_lineage_json_in_the_source_is_used(store: Store, model_dir: Callable[..., Path]) -> None:
    src = model_dir()
    (src / LINEAGE_FILE).write_bytes(lineage().to_bytes())
    assert store.lineage(store.seal(src).id) == lineage()
    with pytest.raises(PackageFormatError):
        store.seal(src, lineage())


def test_concurrent_sealing_of_the_same_content_ends_with_one_package(
    store: Store, model_dir: Callable[..., Path]
) -> None:
    sources = [model_dir(seed=7) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(lambda s: store.seal(s, lineage()).id, sources))
    assert len(ids) == 1
    assert store.ids() == list(ids)
    store.check_files(ids.pop())
    assert not any((Path(store.root) / ".tmp").iterdir())


def _seal_in_child(root: str, src: str) -> str:
    return Store.open(root).seal(src, lineage()).id


def test_concurrent_sealing_across_processes(store: Store, model_dir: Callable[..., Path]) -> None:
    sources = [str(model_dir(seed=9)) for _ in range(4)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        ids = set(pool.starmap(_seal_in_child, [(store.root, s) for s in sources]))
    assert len(ids) == 1
    assert store.ids() == list(ids)


def test_a_failure_mid_seal_leaves_nothing_visible(
    store: Store, model_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import studbook.artifacts.store as store_module

    calls = []

    def failing_copy(src: Path, dest: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        dest.write_bytes(src.read_bytes())

    monkeypatch.setattr(store_module, "_copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        store.seal(model_dir(), lineage())
    assert store.ids() == []
    assert not list(Path(store.root).glob("sha256/*"))
    assert not any((Path(store.root) / ".tmp").iterdir())


def test_a_killed_sealer_leaves_no_partial_package(
    store: Store, model_dir: Callable[..., Path], tmp_path: Path
) -> None:
    # Many small files make the copy slow enough to be killed in the middle of it.
    files = {f"shard-{i:04d}.bin": os.urandom(4096) for i in range(400)}
    src = model_dir(files)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.unit.artifacts.conftest import lineage
        from studbook.artifacts import Store
        print("start", flush=True)
        Store.open({store.root!r}).seal({str(src)!r}, lineage())
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "start"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ids = store.ids()
    # Either it finished before the kill (a whole package) or nothing is visible.
    for artifact in ids:
        store.check_files(artifact)
    # A later sealing of the same content succeeds and yields a complete package.
    manifest = store.seal(src, lineage())
    assert store.ids() == [manifest.id]
    store.check_files(manifest.id)
    # What the killed sealer left behind is garbage, collected once it is old enough.
    store.clean_temporary(older_than_s=0)
    assert not any((Path(store.root) / ".tmp").iterdir())


def test_reads_verify_what_they_read(store: Store, model_dir: Callable[..., Path]) -> None:
    manifest = store.seal(model_dir(), lineage())
    path = Path(store.package_path(manifest.id)) / "files" / "config.json"
    path.chmod(0o644)
    path.write_bytes(b'{"architectures":["GPT2"]}')
    with pytest.raises(ContentMismatchError):
        store.read_file(manifest.id, "config.json")


def test_fetch_copies_and_verifies(
    store: Store, model_dir: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = store.seal(model_dir(), lineage())
    out = store.fetch(manifest.id, tmp_path / "copy")
    assert out == manifest
    assert (tmp_path / "copy" / "tokenizer" / "vocab.txt").read_bytes().startswith(b"[PAD]")
    path = Path(store.package_path(manifest.id)) / "files" / "model.safetensors"
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(ContentMismatchError):
        store.fetch(manifest.id, tmp_path / "copy2")
    assert not (tmp_path / "copy2").exists()


def test_unknown_ids_and_tampered_manifests(store: Store, model_dir: Callable[..., Path]) -> None:
    with pytest.raises(ArtifactNotFoundError):
        store.manifest("sha256:" + "0" * 64)
    manifest = store.seal(model_dir(), lineage())
    path = Path(store.package_path(manifest.id)) / MANIFEST_FILE
    data = json.loads(path.read_bytes())
    data["files"][0]["size"] += 1
    path.chmod(0o644)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactIdMismatchError):
        store.manifest(manifest.id)


def test_a_plain_path_and_a_file_uri_open_the_same_store(
    tmp_path: Path, model_dir: Callable[..., Path]
) -> None:
    a = Store.open(tmp_path / "pvc")
    manifest = a.seal(model_dir(), lineage())
    b = Store.open(f"file://{tmp_path / 'pvc'}")
    assert b.ids() == [manifest.id]


def test_object_store_uris_resolve_to_their_filesystems() -> None:
    gcs = Store.open("gs://models/studbook", token="anon")
    import gcsfs

    assert isinstance(gcs.fs, gcsfs.GCSFileSystem)
    assert (gcs.root, gcs.is_local) == ("models/studbook", False)
    assert gcs.package_path("sha256:" + "a" * 64) == "models/studbook/sha256/" + "a" * 64
    s3 = Store.open("s3://models/studbook", anon=True)
    import s3fs

    assert isinstance(s3.fs, s3fs.S3FileSystem)
    assert not s3.is_local
