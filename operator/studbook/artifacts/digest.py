"""Content ids and the parallel hashing behind them.

The id of a package is ``sha256:`` + the hex SHA-256 of the RFC 8785 canonical JSON of the list
of ``{"path", "size", "sha256"}`` of its files, sorted by path, so names and sizes are bound
as well as contents.

The per-file ``sha256`` is a two-level tree so that one large file can be hashed (and
re-verified at every gate) on all cores: the file is cut into shards of
:attr:`DigestParams.shard_size` bytes; a file of at most one shard has its plain SHA-256 (what
``sha256sum`` prints), a larger file has the SHA-256 of the concatenation of its shard digests.
The size in the entry says which rule applies, so the two rules cannot be confused. The shard
digests are also exactly what model-signing's shard serialization signs, so one parallel pass
gives both the id and the signed statement. Every parameter of this scheme is recorded next to
the id (:class:`DigestParams`); changing any of them changes the id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import rfc8785

from studbook.artifacts.errors import ArtifactIdMismatchError, PackageFormatError

LAYOUT = "studbook.dev/package/v1"
"""The package layout version, recorded in every manifest."""

DEFAULT_SHARD_SIZE = 64 * 1024 * 1024
"""64 MiB: small enough to spread one multi-GB file over every core, big enough to be cheap."""

_CHUNK = 4 * 1024 * 1024

FILE_DIGESTS = ("sha256-shard-tree", "sha256")
"""The supported ways to form a file's digest."""


@dataclass(frozen=True)
class DigestParams:
    """Every parameter that changes a digest, recorded beside the id."""

    algorithm: str = "sha256"
    """The hash of files, shards, the tree and the id."""
    file_digest: str = "sha256-shard-tree"
    """How a file's digest is formed: ``sha256-shard-tree`` (see the module docstring) or
    ``sha256``, the plain SHA-256 of every file (one core per file, however large)."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Shard size in bytes (``sha256-shard-tree`` only)."""
    canonicalization: str = "rfc8785"
    """How the file list is serialized before the id is taken."""
    layout: str = LAYOUT
    """The package layout version."""

    def __post_init__(self) -> None:
        if (self.algorithm, self.canonicalization, self.layout) != (
            "sha256",
            "rfc8785",
            LAYOUT,
        ) or self.file_digest not in FILE_DIGESTS:
            raise PackageFormatError(f"unsupported digest parameters: {self}")
        if self.shard_size < 1024 * 1024:
            raise PackageFormatError("shard_size must be at least 1 MiB")

    def ranges(self, size: int) -> list[tuple[int, int]]:
        """The ``[start, end)`` pieces a file is hashed in (none for an empty file)."""
        if self.file_digest == "sha256":
            return [(0, size)] if size else []
        return shard_ranges(size, self.shard_size)

    def combine(self, size: int, digests: Sequence[bytes]) -> str:
        """The file digest of the id from the digests of its pieces."""
        return file_digest(size, digests)

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to the manifest."""
        return {
            "algorithm": self.algorithm,
            "fileDigest": self.file_digest,
            "shardSize": self.shard_size,
            "canonicalization": self.canonicalization,
            "layout": self.layout,
        }

    @classmethod
    def from_json(cls, data: Any) -> DigestParams:
        """Read parameters back from a manifest; unknown values are refused."""
        try:
            return cls(
                algorithm=str(data["algorithm"]),
                file_digest=str(data["fileDigest"]),
                shard_size=int(data["shardSize"]),
                canonicalization=str(data["canonicalization"]),
                layout=str(data["layout"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageFormatError(f"unreadable digest parameters: {exc}") from exc


@dataclass(frozen=True, order=True)
class FileEntry:
    """One file of a package as the id binds it."""

    path: str
    """POSIX path relative to the package root."""
    size: int
    """Size in bytes."""
    sha256: str
    """Lower-case hex digest of the file (see the module docstring for large files)."""

    def __post_init__(self) -> None:
        check_package_path(self.path)

    def to_json(self) -> dict[str, Any]:
        """The JSON object hashed into the id."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def check_package_path(path: str) -> str:
    """Refuse a file path that could leave the package: it must be relative POSIX segments.

    A manifest is data from whoever wrote the store, so its paths are checked before any of them
    is joined to a directory: no absolute path, no ``..`` or ``.`` or empty segment, no
    backslash (a separator elsewhere), no control character.
    """
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise PackageFormatError(f"not a safe path inside a package: {path!r}")
    return path


@dataclass(frozen=True)
class Shard:
    """One shard of one file: ``[start, end)`` and its SHA-256."""

    path: str
    start: int
    end: int
    sha256: bytes


@dataclass(frozen=True)
class HashedFile:
    """A file's entry together with its shard digests."""

    entry: FileEntry
    shards: tuple[Shard, ...] = field(default=())


def artifact_id(entries: Iterable[FileEntry]) -> str:
    """The content id of a list of file entries (order does not matter)."""
    items = sorted(entries)
    paths = [e.path for e in items]
    if len(set(paths)) != len(paths):
        raise PackageFormatError("duplicate paths in file list")
    body = rfc8785.dumps([e.to_json() for e in items])
    return "sha256:" + hashlib.sha256(body).hexdigest()


def check_id(claimed: str, entries: Iterable[FileEntry]) -> None:
    """Raise :class:`ArtifactIdMismatchError` unless ``entries`` hash to ``claimed``."""
    actual = artifact_id(entries)
    if actual != claimed:
        raise ArtifactIdMismatchError(f"file list hashes to {actual}, the package claims {claimed}")


def split_id(artifact: str) -> str:
    """The hex part of an id, after checking its shape."""
    algo, _, hexpart = artifact.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise PackageFormatError(f"not an artifact id: {artifact!r}")
    return hexpart


def shard_ranges(size: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges of a file (none for an empty file, as model-signing does)."""
    return [(start, min(start + shard_size, size)) for start in range(0, size, shard_size)]


def file_digest(size: int, shard_digests: Sequence[bytes]) -> str:
    """Combine shard digests into the file digest of the id."""
    if size == 0:
        return hashlib.sha256(b"").hexdigest()
    if len(shard_digests) == 1:
        return shard_digests[0].hex()
    return hashlib.sha256(b"".join(shard_digests)).hexdigest()


class RangeReader(Protocol):
    """Hashes one byte range of one file of a package."""

    def __call__(self, path: str, start: int, end: int, progress: Callable[[int], None]) -> bytes:
        """Return the SHA-256 of ``[start, end)`` of ``path``, reporting bytes as read."""
        ...


def local_range_reader(root: Path) -> RangeReader:
    """A reader over a local directory: unbuffered reads into a reused buffer.

    ``hashlib`` releases the GIL on large updates and so does ``readinto``, so threads use
    every core.
    """

    def read(path: str, start: int, end: int, progress: Callable[[int], None]) -> bytes:
        h = hashlib.sha256()
        buf = bytearray(min(_CHUNK, max(end - start, 1)))
        view = memoryview(buf)
        with open(root / path, "rb", buffering=0) as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                n = f.readinto(view[: min(len(buf), remaining)])
                if not n:
                    raise PackageFormatError(f"{path} is shorter than expected")
                h.update(view[:n])
                remaining -= n
                progress(n)
        return h.digest()

    return read


def default_workers() -> int:
    """One hashing thread per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def hash_files(
    files: Sequence[tuple[str, int]],
    reader: RangeReader,
    *,
    params: DigestParams | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[HashedFile]:
    """Hash ``(path, size)`` pairs shard by shard on a thread pool; entries come back sorted."""
    params = params or DigestParams()
    report = progress or (lambda _n: None)
    jobs: list[tuple[str, int, int]] = []
    for path, size in files:
        jobs.extend((path, s, e) for s, e in params.ranges(size))
    # Longest first keeps the cores busy to the end when shards differ in size.
    jobs.sort(key=lambda j: j[2] - j[1], reverse=True)
    n = max(1, min(workers or default_workers(), len(jobs) or 1))
    results: dict[tuple[str, int], bytes] = {}
    if jobs:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="studbook-hash") as pool:
            digests = pool.map(lambda j: reader(j[0], j[1], j[2], report), jobs)
            for job, digest in zip(jobs, digests, strict=True):
                results[(job[0], job[1])] = digest
    hashed: list[HashedFile] = []
    for path, size in sorted(files):
        shards = tuple(Shard(path, s, e, results[(path, s)]) for s, e in params.ranges(size))
        entry = FileEntry(path, size, params.combine(size, [s.sha256 for s in shards]))
        hashed.append(HashedFile(entry, shards))
    return hashed


def scan_local(root: Path) -> list[tuple[str, int]]:
    """The regular files under ``root`` as ``(posix path, size)``; symlinks are refused."""
    found: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
            full = Path(dirpath, name)
            if full.is_symlink():
                raise PackageFormatError(f"symbolic links are not allowed in a package: {full}")
            if not full.is_file():
                raise PackageFormatError(f"not a regular file: {full}")
            found.append((full.relative_to(root).as_posix(), full.stat().st_size))
    return found
