from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import rfc8785

from studbook.artifacts.digest import (
    DigestParams,
    FileEntry,
    artifact_id,
    hash_files,
    local_range_reader,
    scan_local,
    split_id,
)
from studbook.artifacts.errors import PackageFormatError

MIB = 1024 * 1024


def test_id_is_sha256_of_canonical_json_of_sorted_entries() -> None:
    entries = [FileEntry("b.bin", 3, "ab" * 32), FileEntry("a.json", 2, "cd" * 32)]
    preimage = (
        '[{"path":"a.json","sha256":"' + "cd" * 32 + '","size":2},'
        '{"path":"b.bin","sha256":"' + "ab" * 32 + '","size":3}]'
    ).encode()
    assert rfc8785.dumps([e.to_json() for e in sorted(entries)]) == preimage
    assert artifact_id(entries) == "sha256:" + hashlib.sha256(preimage).hexdigest()
    assert artifact_id(reversed(entries)) == artifact_id(entries)


def test_names_and_sizes_are_bound() -> None:
    base = [FileEntry("w.bin", 3, "ab" * 32)]
    assert artifact_id(base) != artifact_id([FileEntry("x.bin", 3, "ab" * 32)])
    assert artifact_id(base) != artifact_id([FileEntry("w.bin", 4, "ab" * 32)])


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(PackageFormatError):
        artifact_id([FileEntry("a", 1, "ab" * 32), FileEntry("a", 1, "cd" * 32)])


def test_small_files_get_their_plain_sha256_large_files_a_shard_tree(tmp_path: Path) -> None:
    params = DigestParams(shard_size=MIB)
    small = b"hello" * 1000
    large = bytes(range(256)) * (MIB * 5 // 2 // 256)  # 2.5 shards
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "large").write_bytes(large)
    (tmp_path / "empty").write_bytes(b"")
    hashed = {
        h.entry.path: h
        for h in hash_files(scan_local(tmp_path), local_range_reader(tmp_path), params=params)
    }
    assert hashed["small"].entry.sha256 == hashlib.sha256(small).hexdigest()
    assert hashed["empty"].entry.sha256 == hashlib.sha256(b"").hexdigest()
    assert hashed["empty"].shards == ()
    shards = [large[i : i + MIB] for i in range(0, len(large), MIB)]
    assert [(s.start, s.end) for s in hashed["large"].shards] == [
        (0, MIB),
        (MIB, 2 * MIB),
        (2 * MIB, len(large)),
    ]
    tree = hashlib.sha256(b"".join(hashlib.sha256(s).digest() for s in shards)).hexdigest()
    assert hashed["large"].entry.sha256 == tree


def test_parallel_and_serial_hashing_agree(tmp_path: Path) -> None:
    params = DigestParams(shard_size=MIB)
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * (MIB * i + 17))
    files = scan_local(tmp_path)
    one = hash_files(files, local_range_reader(tmp_path), params=params, workers=1)
    many = hash_files(files, local_range_reader(tmp_path), params=params, workers=8)
    assert one == many


def test_parameters_round_trip_and_unknown_ones_are_refused() -> None:
    params = DigestParams()
    assert DigestParams.from_json(json.loads(json.dumps(params.to_json()))) == params
    with pytest.raises(PackageFormatError):
        DigestParams.from_json({**params.to_json(), "algorithm": "md5"})


def test_symlinks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(PackageFormatError, match="symbolic"):
        scan_local(tmp_path)


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "0" * 64, "sha256:" + "G" * 64, ""])
def test_malformed_ids_are_refused(bad: str) -> None:
    with pytest.raises(PackageFormatError):
        split_id(bad)


def test_plain_file_digests_are_whole_file_sha256(tmp_path: Path) -> None:
    params = DigestParams(file_digest="sha256", shard_size=MIB)
    large = bytes(range(256)) * (MIB * 5 // 2 // 256)
    (tmp_path / "large").write_bytes(large)
    (hashed,) = hash_files(scan_local(tmp_path), local_range_reader(tmp_path), params=params)
    assert hashed.entry.sha256 == hashlib.sha256(large).hexdigest()
    assert [(s.start, s.end) for s in hashed.shards] == [(0, len(large))]
    tree = DigestParams(shard_size=MIB)
    (treed,) = hash_files(scan_local(tmp_path), local_range_reader(tmp_path), params=tree)
    assert artifact_id([treed.entry]) != artifact_id([hashed.entry])
