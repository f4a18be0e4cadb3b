"""The merge methods and their registry.

Linear, task arithmetic, TIES, DARE and breadcrumbs are parameterised instances of one
:class:`GeneralTaskArithmetic` (a sparsification of each task vector, then an optional sign
consensus); SLERP and model stock differ and have their own classes. Every method works on one
tensor at a time, reading its inputs in row chunks, so memory is bounded by a few chunks (plus
one float32 copy of one tensor for the methods that rank a whole task vector by magnitude).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from studbook_trainer.failures import StepRefused
from studbook_trainer.merge.inputs import MemoryInputs, TensorInputs
from studbook_trainer.merge.plan import Param, TensorParams
from studbook_trainer.merge.sparsify import TopSelector, count_for, random_keep

Sparsify = Literal["none", "magnitude", "random", "breadcrumbs"]
Consensus = Literal["none", "ties"]


class MergeConfigError(StepRefused, ValueError):
    """A merge plan asks for something the method cannot do (missing base, value out of range)."""


@dataclass(frozen=True)
class ParamSpec:
    """A coefficient a method reads."""

    default: Param | None
    """``None``: the coefficient is required."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    per_parent: bool = False
    """Whether each parent may carry its own value."""

    def check(self, method: str, key: str, value: float) -> None:
        """Refuse a value out of range."""
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high or math.isnan(value):
            bracket = "(" if self.low_open else "["
            raise MergeConfigError(
                f"{method}: {key}={value} is out of range {bracket}{self.low}, {self.high}]"
            )


WEIGHT = ParamSpec(1.0, -10.0, 10.0, per_parent=True)
DENSITY = ParamSpec(None, 0.0, 1.0, low_open=True, per_parent=True)
GAMMA = ParamSpec(0.01, 0.0, 1.0, per_parent=True)
SCALE = ParamSpec(1.0, -10.0, 10.0)
T = ParamSpec(None, 0.0, 1.0)


class MergeMethod(ABC):
    """A way to combine one tensor of several parents."""

    name: str
    """The registry key."""
    reference: str
    """Where the method is described."""
    requires_base: bool
    """Whether a base model is required."""
    allows_base: bool = True
    min_parents: int = 1
    max_parents: int | None = None
    params: Mapping[str, ParamSpec]
    """Coefficients read by the method, with defaults and ranges."""

    def defaults(self) -> dict[str, Param]:
        """Default coefficients."""
        return {k: s.default for k, s in self.params.items() if s.default is not None}

    def check_shape(self, n_parents: int, has_base: bool) -> None:
        """Refuse a plan with the wrong number of parents or a missing (or unwanted) base."""
        if self.requires_base and not has_base:
            raise MergeConfigError(f"{self.name} needs a base model")
        if has_base and not self.allows_base:
            raise MergeConfigError(f"{self.name} takes no base model")
        if n_parents < self.min_parents:
            raise MergeConfigError(f"{self.name} needs at least {self.min_parents} parents")
        if self.max_parents is not None and n_parents > self.max_parents:
            raise MergeConfigError(f"{self.name} takes at most {self.max_parents} parents")

    def check_params(self, p: TensorParams, tensor: str) -> None:
        """Refuse unknown, missing or out-of-range coefficients for one tensor."""
        for scope in (p.glob, *p.per_parent):
            for key in scope:
                if key not in self.params:
                    known = ", ".join(sorted(self.params))
                    raise MergeConfigError(f"{self.name}: unknown coefficient {key!r} ({known})")
        for key, spec in self.params.items():
            scopes = p.per_parent if spec.per_parent else (p.glob,)
            for scope in scopes:
                if key not in scope:
                    raise MergeConfigError(f"{self.name}: {key} is required (tensor {tensor})")
                spec.check(self.name, key, scope[key])

    @abstractmethod
    def merge_tensor(self, inputs: TensorInputs, p: TensorParams) -> Iterator[torch.Tensor]:
        """Yield the merged tensor's row chunks (float32, in order)."""

    def merge_tensors(
        self,
        parents: Sequence[torch.Tensor],
        base: torch.Tensor | None = None,
        *,
        params: Mapping[str, float] | None = None,
        parent_params: Sequence[Mapping[str, float]] | None = None,
        seed: int = 0,
        name: str = "tensor",
    ) -> torch.Tensor:
        """Merge in-memory tensors (for tests and small merges); returns float32."""
        self.check_shape(len(parents), base is not None)
        given = dict(params or {})
        defaults = {k: v for k, v in self.defaults().items() if not isinstance(v, tuple)}
        glob = {k: float(v) for k, v in {**defaults, **given}.items()}
        shared = {
            k: v for k, v in glob.items() if k not in self.params or self.params[k].per_parent
        }
        per = [
            {**shared, **(parent_params[i] if parent_params is not None else {})}
            for i in range(len(parents))
        ]
        tp = TensorParams(
            per_parent=tuple(per),
            glob={k: v for k, v in glob.items() if k not in shared},
        )
        self.check_params(tp, name)
        inputs = MemoryInputs(name, parents, base, seed=seed)
        pieces = list(self.merge_tensor(inputs, tp))
        return torch.cat([p.reshape(-1) for p in pieces]).reshape(inputs.shape)


@dataclass(frozen=True, eq=False)
class GeneralTaskArithmetic(MergeMethod):
    """``base + scale * combine(sparsify(w_i * (x_i - base)))``.

    ``sparsify`` is ``none``, ``magnitude`` (keep the ``density`` largest entries, TIES trim),
    ``random`` (DARE: keep each entry with probability ``density`` and rescale by
    ``1/density``) or ``breadcrumbs`` (drop the ``gamma`` largest entries and keep the next
    ``density``). ``consensus`` is ``none`` (sum, divided by the sum of weights when
    ``normalize``) or ``ties`` (elect each entry's sign as the sign of the weighted sum; keep
    only the agreeing entries; with ``normalize``, divide by the sum of the agreeing weights: the
    disjoint mean). Without a base (``linear``) the first parent is the reference, so the result
    is the weighted mean of the parents.
    """

    name: str
    reference: str
    sparsify: Sparsify = "none"
    consensus: Consensus = "none"
    requires_base: bool = True
    normalize: bool = False
    params: Mapping[str, ParamSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec: dict[str, ParamSpec] = {
            "weight": WEIGHT,
            "scale": SCALE,
            "normalize": ParamSpec(self.normalize, 0.0, 1.0),
        }
        if self.sparsify != "none":
            spec["density"] = DENSITY
        if self.sparsify == "breadcrumbs":
            spec["gamma"] = GAMMA
        object.__setattr__(self, "params", spec)

    def check_params(self, p: TensorParams, tensor: str) -> None:
        """Also refuse breadcrumbs whose ``density + gamma`` exceeds one."""
        super().check_params(p, tensor)
        if self.sparsify == "breadcrumbs":
            for pp in p.per_parent:
                if pp["density"] + pp["gamma"] > 1.0 + 1e-9:
                    raise MergeConfigError(f"{self.name}: density + gamma must not exceed 1")
        if self.consensus == "none" and p.glob["normalize"]:
            total = sum(pp["weight"] for pp in p.per_parent)
            if abs(total) < 1e-12:
                raise MergeConfigError(f"{self.name}: weights sum to zero for tensor {tensor}")

    def _selectors(self, inputs: TensorInputs, i: int, p: TensorParams) -> list[TopSelector]:
        """Magnitude thresholds of parent ``i``'s task vector over the whole tensor."""
        n = inputs.numel
        density = p.parent(i, "density")
        if self.sparsify == "magnitude":
            ks = [count_for(density, n)]
        else:
            top = count_for(p.parent(i, "gamma"), n)
            ks = [min(n, top + count_for(density, n)), top]
        if all(k <= 0 or k >= n for k in ks):
            return [TopSelector(k, n, 0.0, 0) for k in ks]
        magnitudes = torch.empty(n, dtype=torch.float32, device=inputs.device)
        offset = 0
        for chunk in inputs.chunks(parents=[i], raw=True):
            assert chunk.base is not None
            m = chunk.base.numel()
            out = magnitudes[offset : offset + m]
            torch.sub(chunk.parents[0].float().reshape(-1), chunk.base.float().reshape(-1), out=out)
            out.abs_()
            offset += m
        return TopSelector.build(magnitudes, ks)

    def merge_tensor(self, inputs: TensorInputs, p: TensorParams) -> Iterator[torch.Tensor]:
        """Yield the merged tensor chunk by chunk."""
        n = inputs.n_parents
        weights = [p.parent(i, "weight") for i in range(n)]
        normalize = bool(p.glob["normalize"])
        scale = p.glob["scale"]
        has_base = inputs.has_base
        if self.sparsify != "none" and not has_base:
            raise MergeConfigError(f"{self.name}: sparsification needs a base model")
        selectors: dict[int, list[TopSelector]] = {}
        if self.sparsify in ("magnitude", "breadcrumbs"):
            selectors = {i: self._selectors(inputs, i, p) for i in range(n)}
        contributing = list(range(n)) if has_base else list(range(1, n))
        total_weight = sum(weights)
        for chunk in inputs.chunks(raw=True):
            raw_ref = chunk.base if has_base else chunk.parents[0]
            assert raw_ref is not None
            ref = raw_ref.float()
            deltas: list[tuple[int, torch.Tensor]] = []
            for i in contributing:
                d = (
                    chunk.parents[i].float().sub_(ref)
                    if chunk.parents[i].dtype != torch.float32
                    else torch.sub(chunk.parents[i], ref)
                )
                deltas.append((i, self._sparsify_chunk(d, i, chunk.index, inputs, p, selectors)))
            chunk.parents.clear()
            if not has_base and not normalize and total_weight != 1.0:
                ref.mul_(total_weight)
            if self.consensus == "none":
                div = total_weight if normalize else 1.0
                if len(deltas) == 1:
                    i, d = deltas[0]
                    yield ref.add_(d, alpha=scale * weights[i] / div)
                    continue
                acc: torch.Tensor | None = None
                for i, d in deltas:
                    if acc is None:
                        acc = d.mul_(weights[i])
                    else:
                        acc.add_(d, alpha=weights[i])
                yield ref if acc is None else ref.add_(acc, alpha=scale / div)
            else:
                yield ref.add_(self._ties(deltas, weights, normalize, ref), alpha=scale)

    def _sparsify_chunk(
        self,
        d: torch.Tensor,
        i: int,
        chunk_index: int,
        inputs: TensorInputs,
        p: TensorParams,
        selectors: dict[int, list[TopSelector]],
    ) -> torch.Tensor:
        if self.sparsify == "none":
            return d
        if self.sparsify == "random":
            density = p.parent(i, "density")
            if density >= 1.0:
                return d
            keep = random_keep(d.shape, density, inputs.generator(i, chunk_index), d.device)
            return d.mul_(keep).div_(density)
        if self.sparsify == "magnitude":
            return selectors[i][0].trim(d)
        mags = d.abs()
        keep = selectors[i][0].select(mags)
        keep &= ~selectors[i][1].select(mags)
        return d.mul_(keep)

    @staticmethod
    def _ties(
        deltas: list[tuple[int, torch.Tensor]],
        weights: list[float],
        normalize: bool,
        like: torch.Tensor,
    ) -> torch.Tensor:
        """Sign election by the weighted sum, then the (disjoint) mean of the agreeing entries."""
        if not deltas:
            return torch.zeros_like(like)
        total: torch.Tensor | None = None
        for i, d in deltas:
            if total is None:
                total = d * weights[i]
            else:
                total.add_(d, alpha=weights[i])
        assert total is not None
        mixed = torch.zeros_like(like)
        divisor = torch.zeros_like(like) if normalize else None
        for i, d in deltas:
            # an entry agrees when its weighted sign is the elected (nonzero) one
            agree = torch.mul(d, total)
            if weights[i] >= 0:
                agree.gt_(0)
            else:
                agree.lt_(0)
            mixed.addcmul_(d, agree, value=weights[i])
            if divisor is not None:
                divisor.add_(agree, alpha=weights[i])
        if divisor is not None:
            if all(weights[i] > 0 for i, _ in deltas):
                divisor.clamp_min_(1e-30)
            else:
                divisor.masked_fill_(divisor == 0, 1.0)
            mixed.div_(divisor)
        return mixed


@dataclass(frozen=True, eq=False)
class Slerp(MergeMethod):
    """Spherical linear interpolation from the first parent (``t=0``) to the second (``t=1``).

    The angle is taken between the two whole tensors; nearly parallel (or zero) tensors are
    interpolated linearly.
    """

    name: str = "slerp"
    reference: str = "https://en.wikipedia.org/wiki/Slerp"
    requires_base: bool = False
    allows_base: bool = False
    min_parents: int = 2
    max_parents: int | None = 2
    params: Mapping[str, ParamSpec] = field(default_factory=lambda: {"t": T})
    parallel_threshold: float = 0.9995
    """Above this absolute cosine the tensors count as parallel."""

    def merge_tensor(self, inputs: TensorInputs, p: TensorParams) -> Iterator[torch.Tensor]:
        """Yield the interpolated tensor chunk by chunk."""
        t = p.glob["t"]
        if t in (0.0, 1.0):
            which = 0 if t == 0.0 else 1
            for chunk in inputs.chunks(parents=[which]):
                yield chunk.parents[0]
            return
        dot = n0 = n1 = 0.0
        for chunk in inputs.chunks():
            a, b = (x.reshape(-1).double() for x in chunk.parents)
            dot += float(a @ b)
            n0 += float(a @ a)
            n1 += float(b @ b)
        denom = math.sqrt(n0) * math.sqrt(n1)
        cos = dot / denom if denom > 0 else 1.0
        if abs(cos) > self.parallel_threshold:
            s0, s1 = None, t
        else:
            theta = math.acos(max(-1.0, min(1.0, cos)))
            s0 = math.sin((1.0 - t) * theta) / math.sin(theta)
            s1 = math.sin(t * theta) / math.sin(theta)
        for chunk in inputs.chunks():
            a, b = chunk.parents
            if s0 is None:
                yield a.add_(b.sub_(a), alpha=t)
            else:
                yield a.mul_(s0).add_(b, alpha=s1)


@dataclass(frozen=True, eq=False)
class ModelStock(MergeMethod):
    """Model stock: from the base towards the parents' mean by a ratio set by their angle.

    The ratio grows with the mean cosine between the parents' task vectors,
    ``t = k cos / (1 + (k - 1) cos)``.
    """

    name: str = "model_stock"
    reference: str = "https://arxiv.org/abs/2403.19522"
    requires_base: bool = True
    min_parents: int = 2
    params: Mapping[str, ParamSpec] = field(default_factory=dict)

    def merge_tensor(self, inputs: TensorInputs, p: TensorParams) -> Iterator[torch.Tensor]:
        """Yield the merged tensor chunk by chunk."""
        k = inputs.n_parents
        dots = [[0.0] * k for _ in range(k)]
        for chunk in inputs.chunks():
            assert chunk.base is not None
            deltas = [(x - chunk.base).reshape(-1).double() for x in chunk.parents]
            for i in range(k):
                for j in range(i, k):
                    dots[i][j] += float(deltas[i] @ deltas[j])
        cosines = []
        for i in range(k):
            for j in range(i + 1, k):
                denom = math.sqrt(dots[i][i]) * math.sqrt(dots[j][j])
                cosines.append(dots[i][j] / denom if denom > 0 else 1.0)
        cos = max(-1.0, min(1.0, sum(cosines) / len(cosines)))
        ratio = k * cos / (1.0 + (k - 1) * cos) if (1.0 + (k - 1) * cos) != 0 else 0.0
        for chunk in inputs.chunks():
            base = chunk.base
            assert base is not None
            mean = torch.zeros_like(base)
            for x in chunk.parents:
                mean.add_(x.sub_(base))
            yield base.add_(mean, alpha=ratio / k)


_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_BREADCRUMBS = "https://arxiv.org/abs/2312.06795"

METHODS: dict[str, MergeMethod] = {}
"""The merge methods by name."""


def register(method: MergeMethod) -> MergeMethod:
    """Add a method to :data:`METHODS`."""
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


for _m in (
    GeneralTaskArithmetic(
        "linear", "https://arxiv.org/abs/2203.05482", requires_base=False, normalize=True
    ),
    GeneralTaskArithmetic("task_arithmetic", "https://arxiv.org/abs/2212.04089"),
    GeneralTaskArithmetic("ties", _TIES, "magnitude", "ties", normalize=True),
    GeneralTaskArithmetic("dare_linear", _DARE, "random", "none"),
    GeneralTaskArithmetic("dare_ties", _DARE, "random", "ties", normalize=True),
    GeneralTaskArithmetic("breadcrumbs", _BREADCRUMBS, "breadcrumbs", "none"),
    GeneralTaskArithmetic("breadcrumbs_ties", _BREADCRUMBS, "breadcrumbs", "ties", normalize=True),
    Slerp(),
    ModelStock(),
):
    register(_m)


def get_method(name: str) -> MergeMethod:
    """A registered method; an unknown name is a configuration error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise MergeConfigError(f"unknown merge method {name!r}; known: {known}") from None
