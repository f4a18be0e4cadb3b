"""Selecting entries of a task vector: exact top-k by magnitude, and random drop (DARE).

Top-k is exact and deterministic: the k entries of largest magnitude, ties at the threshold
broken by position (earlier first). The threshold is found once per tensor with an in-place
selection (no sort), then applied chunk by chunk in flattened order.
"""

from __future__ import annotations

import numpy as np
import torch


def kth_largest(values: torch.Tensor, ks: list[int]) -> list[float]:
    """The k-th largest value of a 1-D tensor for each ``k`` in ``ks`` (1-based, ``<= numel``).

    On the CPU ``values`` is partitioned in place (its order is destroyed).
    """
    n = values.numel()
    if values.device.type == "cpu":
        arr = values.numpy()
        positions = sorted({n - k for k in ks})
        arr.partition(positions)
        return [float(arr[n - k]) for k in ks]
    return [float(torch.kthvalue(values, n - k + 1).values) for k in ks]


def _count_greater(values: torch.Tensor, position: int, threshold: float) -> int:
    """Entries above ``threshold``, which a partition around ``position`` left after it."""
    if values.device.type == "cpu":
        tail = values.numpy()[position + 1 :]
        return int(np.count_nonzero(tail > threshold))
    return int(torch.count_nonzero(values > threshold))


class TopSelector:
    """Marks the ``k`` largest entries of a flattened tensor, fed chunk by chunk in order."""

    def __init__(self, k: int, n: int, threshold: float, greater: int) -> None:
        self.k = k
        self.n = n
        self.threshold = threshold
        self._remaining = k - greater

    @classmethod
    def build(cls, magnitudes: torch.Tensor, ks: list[int]) -> list[TopSelector]:
        """Selectors for each ``k`` over ``magnitudes`` (1-D, consumed: order is destroyed)."""
        n = magnitudes.numel()
        inner = sorted({k for k in ks if 0 < k < n})
        thresholds = dict(zip(inner, kth_largest(magnitudes, inner), strict=True)) if inner else {}
        selectors = []
        for k in ks:
            if k in thresholds:
                thr = thresholds[k]
                selectors.append(cls(k, n, thr, _count_greater(magnitudes, n - k, thr)))
            else:
                selectors.append(cls(k, n, 0.0, 0))
        return selectors

    def trim(self, values: torch.Tensor) -> torch.Tensor:
        """The next chunk (flattened order) with every entry outside the top k set to zero."""
        if self.k <= 0:
            return torch.zeros_like(values)
        if self.k >= self.n:
            return values
        kept = torch.nn.functional.hardshrink(values, self.threshold)
        if self._remaining > 0 and self.threshold > 0:
            eq = values.abs() == self.threshold
            n_eq = int(torch.count_nonzero(eq))
            if n_eq > self._remaining:
                flat = eq.reshape(-1)
                eq = (flat & (flat.cumsum(0) <= self._remaining)).reshape(eq.shape)
            if n_eq:
                kept = torch.where(eq, values, kept)
                self._remaining -= min(n_eq, self._remaining)
        return kept

    def select(self, magnitudes: torch.Tensor) -> torch.Tensor:
        """The keep-mask of the next chunk (``magnitudes`` in flattened order)."""
        if self.k <= 0:
            return torch.zeros_like(magnitudes, dtype=torch.bool)
        if self.k >= self.n:
            return torch.ones_like(magnitudes, dtype=torch.bool)
        keep = magnitudes > self.threshold
        if self._remaining > 0:
            eq = magnitudes == self.threshold
            n_eq = int(torch.count_nonzero(eq))
            if n_eq <= self._remaining:
                keep |= eq
                self._remaining -= n_eq
            elif n_eq:
                flat = eq.reshape(-1)
                first = flat & (flat.cumsum(0) <= self._remaining)
                keep |= first.reshape(eq.shape)
                self._remaining = 0
        return keep


def count_for(fraction: float, n: int) -> int:
    """How many of ``n`` entries a fraction keeps (rounded half up)."""
    return min(n, max(0, int(fraction * n + 0.5)))


def random_keep(
    shape: torch.Size, density: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """A DARE keep-mask: each entry kept with probability ``density``."""
    return torch.rand(shape, generator=generator, device=device) < density
