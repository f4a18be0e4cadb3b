"""Paths from a manifest and links in a package are refused before anything is read or written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import rfc8785

from studbook.artifacts import Store
from studbook.artifacts.digest import FileEntry
from studbook.artifacts.errors import PackageFormatError
from studbook.artifacts.package import LINEAGE_FILE, MANIFEST_FILE

from .conftest import lineage

UNSAFE = [
    "../escaped.txt",
    "a/../../escaped.txt",
    "/tmp/escaped.txt",
    "a//b",
    "./a",
    "a/.",
    "",
    "a\\..\\b",
    "a\x1b[31mb",
]


@pytest.mark.parametrize("path", UNSAFE)
def test_a_file_entry_refuses_paths_that_leave_the_package(path: str) -> None:
    with pytest.raises(PackageFormatError, match="not a safe path"):
        FileEntry(path, 1, "0" * 64)


def _forge(store: Store, tmp_path: Path, bad_path: str) -> str:
    """A package whose manifest names ``bad_path``, its id consistent with its entries.

    The manifest is written by hand, as a tenant who can write to the store would, bypassing
    the checks of :class:`FileEntry`.
    """
    payload = b"owned\n"
    lineage_bytes = lineage().to_bytes()
    entries = [
        {"path": bad_path, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
        {
            "path": LINEAGE_FILE,
            "size": len(lineage_bytes),
            "sha256": hashlib.sha256(lineage_bytes).hexdigest(),
        },
    ]
    entries.sort(key=lambda e: str(e["path"]))
    claimed = "sha256:" + hashlib.sha256(rfc8785.dumps(entries)).hexdigest()
    pkg = Path(store.package_path(claimed))
    (pkg / "files").mkdir(parents=True)
    (pkg / "files" / LINEAGE_FILE).write_bytes(lineage_bytes)
    manifest = {
        "id": claimed,
        "digest": {
            "algorithm": "sha256",
            "fileDigest": "sha256-shard-tree",
            "shardSize": 64 * 1024 * 1024,
            "canonicalization": "rfc8785",
            "layout": "studbook.dev/package/v1",
        },
        "files": entries,
    }
    (pkg / MANIFEST_FILE).write_text(json.dumps(manifest))
    return claimed


def test_fetch_of_a_forged_manifest_writes_nothing_outside_its_destination(
    store: Store, tmp_path: Path
) -> None:
    forged = _forge(store, tmp_path, "../escaped.txt")
    dest = tmp_path / "work" / "copy"
    dest.parent.mkdir()
    with pytest.raises(PackageFormatError, match="not a safe path"):
        store.fetch(forged, dest)
    assert not (tmp_path / "work" / "escaped.txt").exists()
    assert list((tmp_path / "work").iterdir()) == []
    with pytest.raises(PackageFormatError, match="not a safe path"):
        store.read_file(forged, LINEAGE_FILE)


def test_a_manifest_with_an_absolute_path_is_refused(store: Store, tmp_path: Path) -> None:
    forged = _forge(store, tmp_path, str(tmp_path / "abs.txt"))
    with pytest.raises(PackageFormatError, match="not a safe path"):
        store.check_files(forged)
    assert not (tmp_path / "abs.txt").exists()


def _swap_for_link(target: Path) -> None:
    """Move ``target`` away and put a symbolic link to the moved copy in its place."""
    moved = target.with_name(target.name + ".moved")
    os.chmod(target.parent, 0o755)
    shutil.move(target, moved)
    target.symlink_to(moved, target_is_directory=moved.is_dir())


@pytest.mark.parametrize("part", ["files", MANIFEST_FILE, "."])
def test_a_package_part_swapped_for_a_link_to_the_same_content_is_refused(
    store: Store, model_dir: Callable[..., Path], tmp_path: Path, part: str
) -> None:
    manifest = store.seal(model_dir(), lineage())
    pkg = Path(store.package_path(manifest.id))
    assert store.check_files(manifest.id)[0] == manifest
    _swap_for_link(pkg if part == "." else pkg / part)
    with pytest.raises(PackageFormatError, match="symbolic link"):
        store.check_files(manifest.id)
    with pytest.raises(PackageFormatError, match="symbolic link"):
        store.fetch(manifest.id, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_a_file_inside_a_package_swapped_for_a_link_is_refused(
    store: Store, model_dir: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = store.seal(model_dir(), lineage())
    files = Path(store.package_path(manifest.id)) / "files"
    os.chmod(files, 0o755)
    target = files / "config.json"
    outside = tmp_path / "outside.json"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(PackageFormatError, match="symbolic link"):
        store.check_files(manifest.id)
    with pytest.raises(PackageFormatError, match="symbolic link"):
        store.fetch(manifest.id, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_sealing_the_same_directory_into_two_stores_gives_one_id(
    tmp_path: Path, model_dir: Callable[..., Path]
) -> None:
    src = model_dir(seed=3)
    a = Store.open(tmp_path / "a").seal(src, lineage())
    b = Store.open(tmp_path / "b").seal(src, lineage())
    assert a.id == b.id
