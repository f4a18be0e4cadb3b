"""Lazy safetensors reading and streaming, sharded safetensors writing.

Reading is lazy: a tensor (or a range of its rows) is read only when asked for, with one
positioned read (``preadv``) straight into the tensor's memory at the offsets the safetensors
header gives. Unlike ``safe_open``'s memory map, this keeps the process's resident set to the
tensors it holds: every mapped page a process has touched counts in its RSS, so reading a whole
model through a map grows RSS to the model's size even though the pages are only cache.

Writing never holds a shard in memory: every output tensor's name, dtype and shape are known
before the first byte is computed, so each shard's header is written first and tensor bytes are
appended in order as they are produced.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import torch

from studbook_trainer.failures import StepRefused

INDEX_NAME = "model.safetensors.index.json"
"""The index of a sharded safetensors checkpoint, as transformers reads it."""

DTYPES: Mapping[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
"""safetensors dtype codes and their torch dtypes."""

CODES: Mapping[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
FLOATING = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


class CheckpointError(StepRefused, ValueError):
    """A model directory holds no readable safetensors checkpoint."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    """Absolute byte offset of the tensor's data in ``file``."""

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.numel * element_size(self.dtype)

    @property
    def floating(self) -> bool:
        """Whether the tensor holds floating-point values (and so takes part in merges)."""
        return self.dtype in FLOATING


def element_size(code: str) -> int:
    """Bytes per element of a safetensors dtype code."""
    return torch.empty((), dtype=DTYPES[code]).element_size()


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensor entries and metadata of one safetensors file, reading only its header."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise CheckpointError(f"{path}: safetensors header of {n} bytes is implausible")
        header: dict[str, Any] = json.loads(f.read(n))
    header["__data_start__"] = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata


def checkpoint_files(root: Path) -> list[str]:
    """The safetensors files of a model directory, in index order when there is an index."""
    index = root / INDEX_NAME
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    if (root / "model.safetensors").is_file():
        return ["model.safetensors"]
    files = sorted(p.name for p in root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root}: no model.safetensors, no {INDEX_NAME}, no *.safetensors")
    return files


class ModelReader:
    """A model directory opened lazily: headers now, tensor data only on demand."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root}: not a directory")
        self._fds: dict[str, int] = {}
        infos: list[TensorInfo] = []
        for file in checkpoint_files(self.root):
            header, _ = read_header(self.root / file)
            start = int(header.pop("__data_start__"))
            for name, entry in header.items():
                infos.append(
                    TensorInfo(
                        name=name,
                        dtype=entry["dtype"],
                        shape=tuple(entry["shape"]),
                        file=file,
                        offset=start + int(entry["data_offsets"][0]),
                    )
                )
        infos.sort(key=lambda i: (i.file, i.offset))
        self.tensors: dict[str, TensorInfo] = {i.name: i for i in infos}
        """Tensor entries in storage order (file, then offset)."""
        if len(self.tensors) != len(infos):
            raise CheckpointError(f"{self.root}: a tensor name appears in two shards")

    @property
    def config(self) -> dict[str, Any] | None:
        """The model's ``config.json``, if it has one."""
        path = self.root / "config.json"
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            fd = os.open(self.root / file, os.O_RDONLY)
            self._fds[file] = fd
        return fd

    def _read(
        self, info: TensorInfo, offset: int, count: int, shape: tuple[int, ...]
    ) -> torch.Tensor:
        size = element_size(info.dtype)
        out = torch.empty(count * size, dtype=torch.uint8)
        if count:
            view = out.numpy().data
            fd = self._fd(info.file)
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], info.offset + offset * size + done)
                if n <= 0:
                    raise CheckpointError(f"{self.root / info.file}: truncated at {info.name}")
                done += n
        return out.view(DTYPES[info.dtype]).reshape(shape)

    def get(self, name: str) -> torch.Tensor:
        """One whole tensor."""
        info = self.tensors[name]
        return self._read(info, 0, info.numel, info.shape)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor (elements, for a 1-D tensor)."""
        info = self.tensors[name]
        if not info.shape:
            return self.get(name)
        stop = min(stop, info.shape[0])
        per_row = math.prod(info.shape[1:])
        return self._read(
            info,
            start * per_row,
            max(0, stop - start) * per_row,
            (max(0, stop - start), *info.shape[1:]),
        )

    def close(self) -> None:
        """Drop the open file handles."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class OutputTensor:
    """An output tensor announced to the writer before any data is produced."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return math.prod(self.shape) * element_size(self.dtype)


def _encode_header(entries: Sequence[tuple[OutputTensor, int]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for t, start in entries:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [start, start + t.nbytes],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """Writes announced tensors, in announced order, into size-bounded safetensors shards.

    Data arrives as consecutive pieces (rows) of the current tensor through :meth:`write`; the
    writer checks that every tensor receives exactly its announced number of bytes, and writes
    ``model.safetensors.index.json`` on :meth:`close`.
    """

    def __init__(
        self, out_dir: Path, tensors: Sequence[OutputTensor], *, max_shard_bytes: int
    ) -> None:
        if max_shard_bytes <= 0:
            raise ValueError("max_shard_bytes must be positive")
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        shards: list[list[OutputTensor]] = [[]]
        size = 0
        for t in tensors:
            if shards[-1] and size + t.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        n = len(shards)
        self._plan: list[tuple[str, list[OutputTensor]]] = [
            (f"model-{i + 1:05d}-of-{n:05d}.safetensors", shard) for i, shard in enumerate(shards)
        ]
        self._queue: Iterator[tuple[str, OutputTensor]] = (
            (file, t) for file, shard in self._plan for t in shard
        )
        self._file: BinaryIO | None = None
        self._file_name: str | None = None
        self._current: OutputTensor | None = None
        self._remaining = 0
        self.total_size = sum(t.nbytes for t in tensors)

    def _open(self, file: str) -> None:
        if self._file is not None:
            self._file.close()
        shard = dict(self._plan)[file]
        entries: list[tuple[OutputTensor, int]] = []
        offset = 0
        for t in shard:
            entries.append((t, offset))
            offset += t.nbytes
        self._file = (self.out_dir / file).open("wb")
        self._file.write(_encode_header(entries))
        self._file_name = file

    def begin(self, name: str) -> None:
        """Start the next tensor; ``name`` must be the next announced one."""
        if self._remaining:
            raise RuntimeError(f"tensor {self._current} is {self._remaining} bytes short")
        try:
            file, t = next(self._queue)
        except StopIteration:
            raise RuntimeError(f"tensor {name!r} was not announced") from None
        if t.name != name:
            raise RuntimeError(f"expected tensor {t.name!r}, got {name!r}")
        if file != self._file_name:
            self._open(file)
        self._current = t
        self._remaining = t.nbytes

    def write(self, piece: torch.Tensor) -> None:
        """Append the next piece of the current tensor's data (already in its output dtype)."""
        assert self._file is not None and self._current is not None
        if CODES[piece.dtype] != self._current.dtype:
            raise RuntimeError(f"{self._current.name}: got {piece.dtype}, announced dtype differs")
        data = piece.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes > self._remaining:
            raise RuntimeError(f"{self._current.name}: more data than its announced shape")
        self._file.write(data.data)
        self._remaining -= data.nbytes

    def close(self) -> None:
        """Finish the last shard and write the index."""
        if self._remaining:
            raise RuntimeError(f"tensor {self._current} is {self._remaining} bytes short")
        if next(self._queue, None) is not None:
            raise RuntimeError("not every announced tensor was written")
        if self._file is not None:
            self._file.close()
            self._file = None
        weight_map = {t.name: file for file, shard in self._plan for t in shard}
        index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        """Close the open shard without finishing; the caller discards the directory."""
        if self._file is not None:
            self._file.close()
            self._file = None
