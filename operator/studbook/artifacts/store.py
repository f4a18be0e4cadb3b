"""Stores of sealed packages over fsspec: a local directory (or a mounted PVC), S3, GCS.

A store is a URI: ``/var/lib/studbook`` or ``file:///...``, ``s3://bucket/prefix``,
``gs://bucket/prefix``. Sealing never overwrites: a package is visible once its
``manifest.json`` is in place, and that is written last (on a local filesystem the whole package
is renamed into place in one step). Every read is checked against the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from studbook.artifacts.digest import (
    DigestParams,
    FileEntry,
    HashedFile,
    RangeReader,
    hash_files,
    local_range_reader,
    scan_local,
    split_id,
)
from studbook.artifacts.errors import (
    ArtifactIdMismatchError,
    ArtifactNotFoundError,
    ContentMismatchError,
    ExtraFileError,
    MissingFileError,
    PackageFormatError,
    RenamedFileError,
)
from studbook.artifacts.package import LINEAGE_FILE, MANIFEST_FILE, Lineage, Manifest

Progress = Callable[[int], None]
"""A callback told how many more bytes were hashed or copied."""

SIGNATURES = "signatures"
SCORECARDS = "scorecards"
BUNDLE_SUFFIX = ".sigstore.json"


def package_dir(artifact: str) -> str:
    """Where a package lives relative to a store's root."""
    return f"sha256/{split_id(artifact)}"


def _noop(_n: int) -> None:
    pass


@dataclass(frozen=True)
class StoredBlob:
    """A signature or scorecard stored beside a package."""

    name: str
    """File name inside ``signatures/`` or ``scorecards/``."""
    data: bytes
    """Its bytes, as stored."""


class Store:
    """Sealed packages under one root of one fsspec filesystem."""

    def __init__(self, fs: Any, root: str, uri: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.uri = uri
        self.is_local = isinstance(fs, LocalFileSystem)

    @classmethod
    def open(cls, uri: str | os.PathLike[str], **storage_options: Any) -> Store:
        """Open a store by URI (a plain path is a local directory)."""
        text = os.fspath(uri)
        if "://" not in text:
            text = Path(text).absolute().as_posix()
        fs, root = fsspec.core.url_to_fs(text, **storage_options)
        store = cls(fs, root, text)
        if store.is_local:
            Path(root).mkdir(parents=True, exist_ok=True)
        return store

    # -- layout ---------------------------------------------------------------------------

    def package_path(self, artifact: str) -> str:
        """Where one package lives in the filesystem."""
        return f"{self.root}/{package_dir(artifact)}"

    def _files(self, artifact: str) -> str:
        return f"{self.package_path(artifact)}/files"

    def _fresh(self, path: str) -> None:
        """Forget cached listings of a remote filesystem (another writer may have added files)."""
        if not self.is_local:
            self.fs.invalidate_cache(path)

    # -- queries --------------------------------------------------------------------------

    def exists(self, artifact: str) -> bool:
        """Whether a sealed package with this id is visible."""
        self._fresh(self.package_path(artifact))
        return bool(self.fs.exists(f"{self.package_path(artifact)}/{MANIFEST_FILE}"))

    def ids(self) -> list[str]:
        """Every visible package id, sorted."""
        base = f"{self.root}/sha256"
        self._fresh(base)
        if not self.fs.exists(base):
            return []
        found = []
        for entry in self.fs.ls(base, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            artifact = f"sha256:{name}"
            with contextlib.suppress(PackageFormatError):
                if self.exists(artifact):
                    found.append(artifact)
        return sorted(found)

    def manifest(self, artifact: str) -> Manifest:
        """The manifest of a package, its id recomputed and checked."""
        path = f"{self.package_path(artifact)}/{MANIFEST_FILE}"
        if self.is_local:
            self._refuse_links(artifact)
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"{artifact} is not in {self.uri}") from exc
        manifest = Manifest.from_bytes(raw)
        if manifest.id != artifact:
            raise ArtifactIdMismatchError(f"the manifest stored as {artifact} is of {manifest.id}")
        return manifest

    def read_file(self, artifact: str, path: str) -> bytes:
        """One file of a package, checked against the manifest."""
        manifest = self.manifest(artifact)
        try:
            entry = manifest.entry(path)
        except KeyError:
            raise MissingFileError(f"{artifact} has no file {path}") from None
        try:
            data = bytes(self.fs.cat_file(f"{self._files(artifact)}/{path}"))
        except FileNotFoundError:
            raise MissingFileError(f"{path} of {artifact} is missing") from None
        _check_bytes(entry, data, manifest.params)
        return data

    def lineage(self, artifact: str) -> Lineage:
        """The lineage record of a package, checked against the manifest."""
        return Lineage.from_bytes(self.read_file(artifact, LINEAGE_FILE))

    def _refuse_links(self, artifact: str) -> None:
        """Refuse a local package whose directories or manifest are symbolic links.

        A link swapped in for ``files/`` (or the whole package) can point at the same bytes today
        and at others tomorrow; links inside ``files/`` are refused by the listing itself.
        """
        base = Path(self.package_path(artifact))
        for path in (
            base,
            base / "files",
            base / MANIFEST_FILE,
            base / SIGNATURES,
            base / SCORECARDS,
        ):
            if path.is_symlink():
                raise PackageFormatError(
                    f"{artifact}: {path.relative_to(base.parent)} is a symbolic link"
                )

    # -- integrity ------------------------------------------------------------------------

    def _reader(self, artifact: str) -> RangeReader:
        if self.is_local:
            return local_range_reader(Path(self._files(artifact)))
        base = self._files(artifact)

        def read(path: str, start: int, end: int, progress: Progress) -> bytes:
            data = self.fs.cat_file(f"{base}/{path}", start=start, end=end)
            if len(data) != end - start:
                raise ContentMismatchError(f"{path} is shorter than sealed")
            progress(len(data))
            return hashlib.sha256(data).digest()

        return read

    def _listing(self, artifact: str) -> list[tuple[str, int]]:
        base = self._files(artifact)
        if self.is_local:
            if not Path(base).is_dir():
                return []
            return scan_local(Path(base))
        self._fresh(base)
        found = self.fs.find(base, detail=True)
        prefix = base.rstrip("/") + "/"
        return sorted(
            (str(name)[len(prefix) :], int(info["size"]))
            for name, info in found.items()
            if info.get("type", "file") == "file"
        )

    def check_files(
        self,
        artifact: str,
        *,
        progress: Progress | None = None,
        workers: int | None = None,
    ) -> tuple[Manifest, list[HashedFile]]:
        """Re-hash every file and compare with the manifest; refuse any difference.

        Raises the most specific error: :class:`RenamedFileError`, :class:`ExtraFileError`,
        :class:`MissingFileError`, :class:`ContentMismatchError`.
        """
        manifest = self.manifest(artifact)
        listing = self._listing(artifact)
        try:
            hashed = hash_files(
                listing,
                self._reader(artifact),
                params=manifest.params,
                workers=workers,
                progress=progress,
            )
        except FileNotFoundError as exc:
            raise MissingFileError(f"{artifact}: a file vanished while it was read: {exc}") from exc
        compare(manifest, [h.entry for h in hashed])
        return manifest, hashed

    def total_bytes(self, artifact: str) -> int:
        """Bytes a full check of this package reads."""
        return sum(size for _p, size in self._listing(artifact))

    # -- sealing --------------------------------------------------------------------------

    def seal(
        self,
        source: str | os.PathLike[str],
        lineage: Lineage | None = None,
        *,
        params: DigestParams | None = None,
        progress: Progress | None = None,
        workers: int | None = None,
    ) -> Manifest:
        """Seal a local directory of model files into an immutable package; return its manifest.

        ``lineage`` is written as ``lineage.json``; without it the directory must hold one.
        Sealing content that is already stored returns the stored package and writes nothing.
        """
        params = params or DigestParams()
        src = Path(source)
        if src.is_symlink() or not src.is_dir():
            raise PackageFormatError(f"{src} is not a directory")
        listing = scan_local(src)
        has_lineage = any(p == LINEAGE_FILE for p, _ in listing)
        if lineage is not None and has_lineage:
            raise PackageFormatError(f"{src} already holds {LINEAGE_FILE}; pass no lineage")
        if lineage is None:
            if not has_lineage:
                raise PackageFormatError(f"{src} holds no {LINEAGE_FILE} and none was given")
            lineage = Lineage.from_bytes((src / LINEAGE_FILE).read_bytes())
        report = progress or _noop
        if self.is_local:
            return self._seal_local(src, listing, lineage, params, report, workers)
        return self._seal_remote(src, listing, lineage, params, report, workers)

    def _seal_local(
        self,
        src: Path,
        listing: list[tuple[str, int]],
        lineage: Lineage,
        params: DigestParams,
        report: Progress,
        workers: int | None,
    ) -> Manifest:
        root = Path(self.root)
        tmp = root / ".tmp" / uuid.uuid4().hex
        files = tmp / "files"
        try:
            files.mkdir(parents=True)
            for rel, _size in listing:
                if rel == LINEAGE_FILE:
                    continue
                dest = files / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                _copy(src / rel, dest)
            _write_durable(files / LINEAGE_FILE, lineage.to_bytes())
            # Hash what was written, not the source: the id names the stored bytes.
            hashed = hash_files(
                scan_local(files),
                local_range_reader(files),
                params=params,
                workers=workers,
                progress=report,
            )
            manifest = Manifest.build([h.entry for h in hashed], params)
            final = Path(self.package_path(manifest.id))
            if (final / MANIFEST_FILE).exists():
                return self.manifest(manifest.id)
            _write_durable(tmp / MANIFEST_FILE, manifest.to_bytes())
            (tmp / SIGNATURES).mkdir()
            (tmp / SCORECARDS).mkdir()
            _make_read_only(files)
            (tmp / MANIFEST_FILE).chmod(0o444)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / MANIFEST_FILE).exists():
                    # Another sealer of the same content won the race.
                    return self.manifest(manifest.id)
                raise
            _fsync_dir(final.parent)
            return manifest
        finally:
            if tmp.exists():
                _remove_tree(tmp)

    def _seal_remote(
        self,
        src: Path,
        listing: list[tuple[str, int]],
        lineage: Lineage,
        params: DigestParams,
        report: Progress,
        workers: int | None,
    ) -> Manifest:
        lineage_bytes = lineage.to_bytes()
        plain = [(p, s) for p, s in listing if p != LINEAGE_FILE]
        hashed = hash_files(
            plain, local_range_reader(src), params=params, workers=workers, progress=report
        )
        entries = [h.entry for h in hashed]
        entries.append(_entry_of_bytes(LINEAGE_FILE, lineage_bytes, params))
        manifest = Manifest.build(entries, params)
        if self.exists(manifest.id):
            return self.manifest(manifest.id)
        base = self._files(manifest.id)
        # Objects without a manifest are invisible; the manifest is the commit point.
        if plain:
            # One call with lists: async filesystems (s3fs, gcsfs) upload concurrently.
            self.fs.put([str(src / rel) for rel, _ in plain], [f"{base}/{rel}" for rel, _ in plain])
        self.fs.pipe_file(f"{base}/{LINEAGE_FILE}", lineage_bytes)
        stored = dict(self._listing(manifest.id))
        for entry in manifest.files:
            if stored.get(entry.path) != entry.size:
                raise ContentMismatchError(f"{entry.path} changed while it was being sealed")
        if not self._put_once(
            f"{self.package_path(manifest.id)}/{MANIFEST_FILE}", manifest.to_bytes()
        ):
            return self.manifest(manifest.id)  # another sealer of the same content committed first
        return manifest

    def _put_once(self, path: str, data: bytes) -> bool:
        """Write an object unless it exists; return whether this call wrote it.

        Exclusive where the store offers it (S3 ``If-None-Match``, GCS generation 0).
        """
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError, ValueError):
            # A filesystem without exclusive writes: check, then write (same bytes either way).
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
        return True

    def clean_temporary(self, older_than_s: float = 3600.0) -> int:
        """Remove what crashed sealers left in ``.tmp`` (never visible as packages); return a count.

        Only directories older than ``older_than_s`` go, so running sealers are left alone.
        """
        if not self.is_local:
            return 0
        tmp = Path(self.root) / ".tmp"
        if not tmp.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in tmp.iterdir():
            if entry.stat().st_mtime < cutoff:
                _remove_tree(entry)
                removed += 1
        return removed

    # -- copies out -----------------------------------------------------------------------

    def fetch(
        self,
        artifact: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        workers: int | None = None,
    ) -> Manifest:
        """Copy a package's files into a new local directory ``dest``, verified."""
        target = Path(dest)
        if target.exists():
            raise FileExistsError(target)
        manifest = self.manifest(artifact)
        if self.is_local:
            self._listing(artifact)  # refuses a symbolic link anywhere under files/
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            tmp.mkdir(parents=True)
            for entry in manifest.files:
                (tmp / entry.path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(
                [f"{self._files(artifact)}/{e.path}" for e in manifest.files],
                [str(tmp / e.path) for e in manifest.files],
            )
            hashed = hash_files(
                scan_local(tmp),
                local_range_reader(tmp),
                params=manifest.params,
                workers=workers,
                progress=progress,
            )
            compare(manifest, [h.entry for h in hashed])
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                _remove_tree(tmp)
        return manifest

    # -- signatures and scorecards ----------------------------------------------------------

    def _blobs(self, artifact: str, kind: str) -> list[StoredBlob]:
        if not self.exists(artifact):
            raise ArtifactNotFoundError(f"{artifact} is not in {self.uri}")
        base = f"{self.package_path(artifact)}/{kind}"
        self._fresh(base)
        if not self.fs.exists(base):
            return []
        blobs = []
        for path in sorted(self.fs.ls(base, detail=False)):
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            blobs.append(StoredBlob(name, bytes(self.fs.cat_file(str(path)))))
        return blobs

    def _add_blob(self, artifact: str, kind: str, name: str, data: bytes) -> str:
        if not self.exists(artifact):
            raise ArtifactNotFoundError(f"{artifact} is not in {self.uri}")
        path = f"{self.package_path(artifact)}/{kind}/{name}"
        if self.fs.exists(path):
            return name
        if self.is_local:
            target = Path(path)
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f".{name}.{uuid.uuid4().hex}")
            try:
                _write_durable(tmp, data)
                tmp.chmod(0o444)
                os.link(tmp, target)  # fails rather than replace an existing file
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        else:
            self._put_once(path, data)
        return name

    def signatures(self, artifact: str) -> list[StoredBlob]:
        """The signature bundles stored beside a package."""
        return [b for b in self._blobs(artifact, SIGNATURES) if b.name.endswith(BUNDLE_SUFFIX)]

    def add_signature(self, artifact: str, bundle: bytes) -> str:
        """Store a signature bundle beside a package (named by its digest); return the name."""
        name = hashlib.sha256(bundle).hexdigest()[:32] + BUNDLE_SUFFIX
        return self._add_blob(artifact, SIGNATURES, name, bundle)

    def scorecards(self, artifact: str) -> list[tuple[StoredBlob, StoredBlob | None]]:
        """Scorecards stored beside a package, each with its signature bundle if any."""
        blobs = {b.name: b for b in self._blobs(artifact, SCORECARDS)}
        out = []
        for name, blob in sorted(blobs.items()):
            if name.endswith(BUNDLE_SUFFIX):
                continue
            stem = name.removesuffix(".json")
            out.append((blob, blobs.get(stem + BUNDLE_SUFFIX)))
        return out

    def add_scorecard(self, artifact: str, scorecard: bytes, bundle: bytes) -> str:
        """Store a scorecard and its signature beside a package; return the scorecard's name."""
        stem = hashlib.sha256(scorecard).hexdigest()
        self._add_blob(artifact, SCORECARDS, stem + BUNDLE_SUFFIX, bundle)
        return self._add_blob(artifact, SCORECARDS, stem + ".json", scorecard)


def compare(manifest: Manifest, actual: list[FileEntry]) -> None:
    """Refuse any difference between the sealed file list and the files found."""
    expected = {f.path: f for f in manifest.files}
    found = {f.path: f for f in actual}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    for old in missing:
        for new in extra:
            e, f = expected[old], found[new]
            if (e.size, e.sha256) == (f.size, f.sha256):
                raise RenamedFileError(f"{manifest.id}: {old} was renamed to {new}")
    if extra:
        raise ExtraFileError(f"{manifest.id}: files that were never sealed: {', '.join(extra)}")
    if missing:
        raise MissingFileError(f"{manifest.id}: sealed files are missing: {', '.join(missing)}")
    changed = sorted(p for p in expected if expected[p] != found[p])
    if changed:
        raise ContentMismatchError(f"{manifest.id}: contents changed: {', '.join(changed)}")


def _entry_of_bytes(path: str, data: bytes, params: DigestParams) -> FileEntry:
    digests = [hashlib.sha256(data[s:e]).digest() for s, e in params.ranges(len(data))]
    return FileEntry(path, len(data), params.combine(len(data), digests))


def _check_bytes(entry: FileEntry, data: bytes, params: DigestParams) -> None:
    if _entry_of_bytes(entry.path, data, params) != entry:
        raise ContentMismatchError(f"{entry.path} does not match its sealed digest")


def _copy(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        shutil.copyfileobj(fin, fout, 8 * 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk_dirs(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, _files in os.walk(root):
        yield Path(dirpath)


def _make_read_only(root: Path) -> None:
    for d in _walk_dirs(root):
        for f in d.iterdir():
            if f.is_file():
                f.chmod(0o444)
    for d in sorted(_walk_dirs(root), key=lambda p: len(p.parts), reverse=True):
        d.chmod(0o555)


def _remove_tree(path: Path) -> None:
    for d in _walk_dirs(path):
        d.chmod(stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)
