"""The merge plan: parents, method, coefficients and their per-layer / per-tensor resolution.

A coefficient (``weight``, ``density``, ``gamma``, ``t``, ``scale``, ``normalize``, ...) is a
:data:`Param`: a number, or a list of numbers interpolated linearly across the model's numbered
layers (``[0.0, 1.0]`` goes from 0 at the first layer to 1 at the last; tensors outside the
numbered layers take the list's first value). Overrides carry a glob over tensor names; for
each coefficient, the first override that matches the tensor and sets the coefficient wins,
then the parent's own value, then the plan-wide value, then the method's default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

Param = float | bool | tuple[float, ...]
"""A coefficient: a constant, or values interpolated across layers."""

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a tensor belongs to, from its name (``model.layers.7.mlp...``)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def resolve(value: Param, layer: int | None, num_layers: int) -> float:
    """The value of a coefficient for one tensor."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    values = [float(v) for v in value]
    if not values:
        raise ValueError("an empty list of coefficient values")
    if layer is None or len(values) == 1 or num_layers <= 1:
        return values[0]
    pos = min(max(layer, 0), num_layers - 1) / (num_layers - 1) * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    frac = pos - lo
    return values[lo] * (1.0 - frac) + values[hi] * frac


def matches(pattern: str, name: str) -> bool:
    """Whether a tensor-name filter matches: a glob over the whole name, else a substring."""
    if any(c in pattern for c in "*?["):
        return fnmatchcase(name, pattern)
    return pattern in name


@dataclass(frozen=True)
class Override:
    """Coefficients for the tensors whose names match ``filter``."""

    filter: str
    """A glob over whole tensor names (``model.layers.1[0-5].*``) or a plain substring."""
    params: Mapping[str, Param] = field(default_factory=dict)
    """Plan-wide coefficients for matching tensors."""
    parent_params: Mapping[str, Mapping[str, Param]] = field(default_factory=dict)
    """Per-parent coefficients (by parent name) for matching tensors."""


@dataclass(frozen=True)
class MergeParent:
    """One model taking part in a merge."""

    name: str
    """How the plan and its overrides refer to this parent."""
    path: Path
    """A local model directory (safetensors, ``config.json``, tokenizer files)."""
    params: Mapping[str, Param] = field(default_factory=dict)
    """This parent's coefficients (``weight``, ``density``, ...)."""


@dataclass(frozen=True)
class MergePlan:
    """Everything that decides the bytes of a merged model."""

    method: str
    """A name in :data:`studbook_trainer.merge.methods.METHODS`."""
    parents: tuple[MergeParent, ...]
    """The models merged, in order (SLERP: ``t=0`` is the first, ``t=1`` the second)."""
    base: MergeParent | None = None
    """The model task vectors are taken against."""
    params: Mapping[str, Param] = field(default_factory=dict)
    """Plan-wide coefficients."""
    overrides: tuple[Override, ...] = ()
    """Per-tensor-filter coefficients; see the module docstring for precedence."""
    seed: int = 0
    """Seed of random sparsification (DARE); with the same inputs, same output bytes."""
    dtype: str | None = None
    """Output dtype (``bfloat16``, ``float16``, ``float32``); default: the base's (else the
    first parent's) dtype of each tensor."""
    max_shard_bytes: int = 2 * 1024**3
    """Upper bound of one output shard."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda[:n]``."""
    threads: int = 1
    """Intra-op CPU threads during the merge. The work is memory-bound and split into
    cache-sized chunks, where one thread is fastest, and on a shared machine extra threads mostly
    wait for each other; I/O overlaps compute in a separate reader thread regardless."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.parents]
        if self.base is not None:
            names.append(self.base.name)
        if len(set(names)) != len(names):
            raise ValueError(f"parent names must be unique, got {names}")

    def tensor_params(
        self, tensor: str, num_layers: int, defaults: Mapping[str, Param]
    ) -> TensorParams:
        """The resolved coefficients of one tensor."""
        layer = layer_index(tensor)
        matching = [o for o in self.overrides if matches(o.filter, tensor)]

        def pick(key: str, parent: MergeParent | None) -> float | None:
            for o in matching:
                if parent is not None and key in o.parent_params.get(parent.name, {}):
                    return resolve(o.parent_params[parent.name][key], layer, num_layers)
                if key in o.params:
                    return resolve(o.params[key], layer, num_layers)
            if parent is not None and key in parent.params:
                return resolve(parent.params[key], layer, num_layers)
            if key in self.params:
                return resolve(self.params[key], layer, num_layers)
            if key in defaults:
                return resolve(defaults[key], layer, num_layers)
            return None

        keys = set(defaults) | set(self.params)
        for o in self.overrides:
            keys |= set(o.params)
            for pp in o.parent_params.values():
                keys |= set(pp)
        for p in self.parents:
            keys |= set(p.params)
        glob = {k: v for k in keys if (v := pick(k, None)) is not None}
        per_parent = tuple(
            {k: v for k in keys if (v := pick(k, p)) is not None} for p in self.parents
        )
        return TensorParams(per_parent=per_parent, glob=glob)

    def all_parents(self) -> Sequence[MergeParent]:
        """Parents and base."""
        return (*self.parents, *((self.base,) if self.base is not None else ()))


@dataclass(frozen=True)
class TensorParams:
    """Coefficients resolved for one tensor."""

    per_parent: tuple[Mapping[str, float], ...]
    """One mapping per parent (plan-wide values filled in)."""
    glob: Mapping[str, float]
    """Plan-wide values."""

    def get(self, key: str) -> float:
        """A plan-wide coefficient; a missing one is a configuration error."""
        if key not in self.glob:
            raise KeyError(f"coefficient {key!r} is not set")
        return self.glob[key]

    def parent(self, i: int, key: str) -> float:
        """A coefficient of parent ``i``."""
        if key not in self.per_parent[i]:
            raise KeyError(f"coefficient {key!r} is not set for parent {i}")
        return self.per_parent[i][key]
