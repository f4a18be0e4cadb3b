"""The merge math against hand-computed results on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from studbook_trainer.merge import METHODS, MergeConfigError
from studbook_trainer.merge import inputs as inputs_module
from studbook_trainer.merge.inputs import MemoryInputs


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_every_method_has_a_reference_url() -> None:
    assert set(METHODS) == {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "slerp",
        "model_stock",
    }
    for method in METHODS.values():
        assert method.reference.startswith("https://"), method.name


def test_linear_is_the_weighted_mean() -> None:
    out = METHODS["linear"].merge_tensors(
        [t(1, 2), t(3, 6)], parent_params=[{"weight": 1}, {"weight": 3}]
    )
    assert torch.equal(out, t(2.5, 5.0))
    raw = METHODS["linear"].merge_tensors(
        [t(1, 2), t(3, 6)],
        params={"normalize": False},
        parent_params=[{"weight": 1}, {"weight": 3}],
    )
    assert torch.equal(raw, t(10, 20))


def test_task_arithmetic_adds_scaled_task_vectors() -> None:
    # deltas [1, 2] and [-1, 0]; sum [0, 2]; base + 0.5 * sum
    out = METHODS["task_arithmetic"].merge_tensors(
        [t(2, 3), t(0, 1)], t(1, 1), params={"scale": 0.5}
    )
    assert torch.equal(out, t(1, 2))


def test_ties_trim_sign_election_and_disjoint_mean() -> None:
    base = t(1, 1, 1, 1)
    d1, d2 = t(4, -2, 1, 3), t(2, 2, -4, 1)
    # density 0.75 of 4 entries keeps 3 of each task vector:
    #   d1 -> [4, -2, 0, 3]   (drops |1|)
    #   d2 -> [2, 2, -4, 0]   (drops |1|; the two |2| both fit)
    # weights 1 and 0.5: [4, -2, 0, 3] and [1, 1, -2, 0]; their sum [5, -1, -2, 3]
    # elects signs [+, -, -, +]; agreeing entries: d1 at 0, 1, 3 and d2 at 0, 2
    # disjoint mean: [(4 + 1) / 1.5, -2 / 1, -2 / 0.5, 3 / 1] = [10/3, -2, -4, 3]
    out = METHODS["ties"].merge_tensors(
        [base + d1, base + d2],
        base,
        params={"density": 0.75},
        parent_params=[{"weight": 1.0}, {"weight": 0.5}],
    )
    torch.testing.assert_close(out, base + t(10 / 3, -2, -4, 3))


def test_ties_trim_breaks_ties_by_position() -> None:
    # all magnitudes equal: the first two entries are kept
    out = METHODS["ties"].merge_tensors([t(1, -1, 1, 1)], t(0, 0, 0, 0), params={"density": 0.5})
    assert torch.equal(out, t(1, -1, 0, 0))


def test_ties_without_normalize_sums_agreeing_entries() -> None:
    out = METHODS["ties"].merge_tensors(
        [t(2, -1), t(3, 5)], t(0, 0), params={"density": 1.0, "normalize": False}
    )
    # signs: [+, +] elected; d1[1] = -1 disagrees
    assert torch.equal(out, t(5, 5))


def test_ties_trim_is_independent_of_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 16, generator=gen)
    # quantised deltas: many ties at the threshold
    parents = [base + torch.randint(-3, 4, (64, 16), generator=gen).float() for _ in range(3)]
    whole = METHODS["ties"].merge_tensors(parents, base, params={"density": 0.3})
    monkeypatch.setattr(inputs_module, "CHUNK_ELEMENTS", 48)
    chunked = METHODS["ties"].merge_tensors(parents, base, params={"density": 0.3})
    assert torch.equal(whole, chunked)
    kept = METHODS["ties"].merge_tensors(parents[:1], base, params={"density": 0.3}) != base
    assert int(kept.sum()) == round(0.3 * 64 * 16)


def test_dare_drops_and_rescales_with_a_fixed_seed() -> None:
    base = torch.zeros(1000)
    parent = torch.full((1000,), 2.0)
    out = METHODS["dare_linear"].merge_tensors([parent], base, params={"density": 0.3}, seed=7)
    # every entry is either dropped (0) or kept and rescaled to 2 / 0.3
    kept = out != 0
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 2.0 / 0.3))
    assert 0.25 < kept.float().mean() < 0.35
    # the mask is the documented draw: uniform < density from the tensor's seeded generator
    g = MemoryInputs("tensor", [parent], base, seed=7).generator(0, 0)
    assert torch.equal(kept, torch.rand(1000, generator=g) < 0.3)
    again = METHODS["dare_linear"].merge_tensors([parent], base, params={"density": 0.3}, seed=7)
    assert torch.equal(out, again)
    other = METHODS["dare_linear"].merge_tensors([parent], base, params={"density": 0.3}, seed=8)
    assert not torch.equal(out, other)


def test_dare_ties_combines_rescaled_survivors_by_disjoint_mean() -> None:
    out = METHODS["dare_ties"].merge_tensors(
        [torch.full((400,), 2.0), torch.full((400,), 1.0)],
        torch.zeros(400),
        params={"density": 0.5},
        seed=1,
    )
    # survivors are 4 (first), 2 (second) or their mean 3; entries both dropped are 0
    assert set(out.unique().tolist()) == {0.0, 2.0, 3.0, 4.0}


def test_breadcrumbs_drops_outliers_and_the_small_tail() -> None:
    out = METHODS["breadcrumbs"].merge_tensors(
        [t(5, 4, 3, 2, 1, 0.5)], torch.zeros(6), params={"density": 0.5, "gamma": 1 / 6}
    )
    assert torch.equal(out, t(0, 4, 3, 2, 0, 0))


def test_slerp_endpoints_are_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    assert torch.equal(METHODS["slerp"].merge_tensors([a, b], params={"t": 0.0}), a)
    assert torch.equal(METHODS["slerp"].merge_tensors([a, b], params={"t": 1.0}), b)


def test_slerp_of_parallel_vectors_is_linear() -> None:
    out = METHODS["slerp"].merge_tensors([t(1, 2, 3), t(2, 4, 6)], params={"t": 0.25})
    assert torch.equal(out, t(1.25, 2.5, 3.75))


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle() -> None:
    out = METHODS["slerp"].merge_tensors([t(1, 0), t(0, 1)], params={"t": 1 / 3})
    torch.testing.assert_close(out, t(math.cos(math.pi / 6), math.sin(math.pi / 6)))


def test_model_stock_ratio_follows_the_task_vector_angle() -> None:
    base = t(0, 0)
    # cos = 1/sqrt(2); ratio = 2c / (1 + c); result = base + ratio * mean of task vectors
    c = 1 / math.sqrt(2)
    ratio = 2 * c / (1 + c)
    out = METHODS["model_stock"].merge_tensors([t(1, 0), t(1, 1)], base)
    torch.testing.assert_close(out, t(ratio, ratio * 0.5))
    orthogonal = METHODS["model_stock"].merge_tensors([t(1, 0), t(0, 1)], base)
    assert torch.equal(orthogonal, base)


@pytest.mark.parametrize(
    ("method", "params", "parents", "base", "message"),
    [
        ("ties", {}, 2, True, "density is required"),
        ("ties", {"density": 1.5}, 2, True, "out of range"),
        ("ties", {"density": 0.5}, 2, False, "needs a base"),
        ("slerp", {"t": 0.5}, 3, False, "at most 2"),
        ("breadcrumbs", {"density": 0.9, "gamma": 0.2}, 1, True, "must not exceed 1"),
        ("linear", {"lambda": 2.0}, 2, False, "unknown coefficient"),
    ],
)
def test_bad_coefficients_are_refused(
    method: str, params: dict[str, float], parents: int, base: bool, message: str
) -> None:
    with pytest.raises(MergeConfigError, match=message):
        METHODS[method].merge_tensors(
            [torch.ones(4)] * parents, torch.zeros(4) if base else None, params=params
        )
