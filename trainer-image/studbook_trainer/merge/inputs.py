"""The inputs of one output tensor, streamed in row chunks.

A merge method sees one tensor at a time through :class:`TensorInputs`: the parents' (and the
base's) values for consecutive row ranges, as float32 on the compute device. Chunk boundaries
depend only on the tensor's shape, so random draws keyed by chunk are reproducible.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from studbook_trainer.merge.io import ModelReader

_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studbook-merge-read")

CHUNK_ELEMENTS = 1 << 20
"""About 1M elements (4 MiB in float32) per chunk and parent: small enough to stay in cache."""


@dataclass
class Chunk:
    """Rows ``[row_start, row_stop)`` of every parent (and the base).

    float32, or the stored dtype when asked for ``raw`` chunks; always fresh tensors that the
    method may change in place.
    """

    index: int
    row_start: int
    row_stop: int
    parents: list[torch.Tensor]
    base: torch.Tensor | None


def chunk_rows(shape: Sequence[int]) -> list[tuple[int, int]]:
    """The row ranges a tensor of ``shape`` is processed in."""
    if not shape:
        return [(0, 1)]
    rows = shape[0]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [(s, min(s + step, rows)) for s in range(0, rows, step)] or [(0, 0)]


class TensorInputs(ABC):
    """One tensor of every parent, readable whole or in row chunks."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        n_parents: int,
        has_base: bool,
        device: torch.device,
        seed: int,
    ) -> None:
        self.name = name
        self.shape = shape
        self.n_parents = n_parents
        self.has_base = has_base
        self.device = device
        self.seed = seed

    @property
    def numel(self) -> int:
        """Elements of the tensor."""
        return math.prod(self.shape)

    @abstractmethod
    def _read(self, which: int, start: int, stop: int) -> torch.Tensor:
        """Rows of parent ``which`` (``-1``: the base), in their stored dtype, on the CPU."""

    def _load(self, which: int, start: int, stop: int, raw: bool) -> torch.Tensor:
        t = self._read(which, start, stop).to(device=self.device)
        return t if raw else t.float()

    def chunks(
        self, parents: Sequence[int] | None = None, base: bool = True, raw: bool = False
    ) -> Iterator[Chunk]:
        """Row chunks of the selected parents (default all) and, if asked, of the base."""
        selected = list(range(self.n_parents) if parents is None else parents)
        with_base = base and self.has_base

        def load(i: int, start: int, stop: int) -> Chunk:
            return Chunk(
                index=i,
                row_start=start,
                row_stop=stop,
                parents=[self._load(p, start, stop, raw) for p in selected],
                base=self._load(-1, start, stop, raw) if with_base else None,
            )

        # the next chunk is read while the caller computes on this one
        ranges = chunk_rows(self.shape)
        pending: Future[Chunk] | None = _READER.submit(load, 0, *ranges[0])
        for i in range(len(ranges)):
            assert pending is not None
            chunk = pending.result()
            pending = _READER.submit(load, i + 1, *ranges[i + 1]) if i + 1 < len(ranges) else None
            try:
                yield chunk
            except GeneratorExit:
                if pending is not None:
                    pending.cancel()
                raise

    def generator(self, *key: int) -> torch.Generator:
        """A generator seeded by the plan's seed, the tensor's name and ``key``."""
        material = f"{self.seed}:{self.name}:{':'.join(map(str, key))}".encode()
        seed = int.from_bytes(hashlib.sha256(material).digest()[:8], "little") & (2**63 - 1)
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g


class ReaderInputs(TensorInputs):
    """A tensor read lazily from model directories."""

    def __init__(
        self,
        name: str,
        parents: Sequence[ModelReader],
        base: ModelReader | None,
        device: torch.device,
        seed: int,
    ) -> None:
        ref = base if base is not None else parents[0]
        super().__init__(
            name, ref.tensors[name].shape, len(parents), base is not None, device, seed
        )
        self._parents = list(parents)
        self._base = base

    def _read(self, which: int, start: int, stop: int) -> torch.Tensor:
        reader = self._base if which < 0 else self._parents[which]
        assert reader is not None
        if not self.shape:
            return reader.get(self.name).reshape(())
        return reader.rows(self.name, start, stop)


class MemoryInputs(TensorInputs):
    """Tensors already in memory (tests, small merges)."""

    def __init__(
        self,
        name: str,
        parents: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        shape = tuple(parents[0].shape)
        for t in (*parents, *((base,) if base is not None else ())):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(t.shape)} differs from {shape}")
        super().__init__(name, shape, len(parents), base is not None, torch.device(device), seed)
        self._parents = list(parents)
        self._base = base

    def _read(self, which: int, start: int, stop: int) -> torch.Tensor:
        t = self._base if which < 0 else self._parents[which]
        assert t is not None
        return (t if not self.shape else t[start:stop]).clone()
