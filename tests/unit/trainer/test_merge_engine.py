"""The streaming engine on real (tiny) models: identity, sharding, determinism, refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from studbook.api.operators import METHODS_WITH_BASE, SPARSIFYING_METHODS, UNWEIGHTED_METHODS
from studbook_trainer.merge import (
    IncompatibleParentsError,
    MergeConfigError,
    MergeParent,
    MergePlan,
    Override,
    merge,
)
from studbook_trainer.merge.io import INDEX_NAME
from studbook_trainer.merge.methods import METHODS

from ._models import load_state, tiny_llama


def parents(*paths: Path, **params: dict[str, float]) -> tuple[MergeParent, ...]:
    return tuple(MergeParent(f"p{i}", p, params.get(f"p{i}", {})) for i, p in enumerate(paths))


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("method", "params", "with_base"),
    [
        ("linear", {"weight": 0.3}, False),
        ("slerp", {"t": 0.3}, False),
        ("ties", {"density": 0.5}, True),
    ],
)
def test_merging_a_model_with_itself_is_the_identity(
    tmp_path: Path, llama_a: Path, method: str, params: dict[str, float], with_base: bool
) -> None:
    plan = MergePlan(
        method=method,
        parents=(MergeParent("x", llama_a), MergeParent("y", llama_a)),
        base=MergeParent("base", llama_a) if with_base else None,
        params=params,
    )
    merge(plan, tmp_path / "out")
    original, merged = load_state(llama_a), load_state(tmp_path / "out")
    assert original.keys() == merged.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, merged[name]), name


def test_output_is_sharded_indexed_and_loads(
    tmp_path: Path, llama_a: Path, llama_b: Path, tokenizer_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = MergePlan(method="linear", parents=parents(llama_a, llama_b), max_shard_bytes=40_000)
    report = merge(plan, tmp_path / "out")
    out = tmp_path / "out"
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((out / INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == report.bytes_written
    a, b, m = load_state(llama_a), load_state(llama_b), load_state(out)
    for name in a:
        torch.testing.assert_close(m[name], (a[name] + b[name]) / 2)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("red cat and blue dog", return_tensors="pt")
    logits = model(**ids).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_same_inputs_and_seed_give_the_same_bytes(
    tmp_path: Path, llama_a: Path, llama_b: Path, llama_base: Path
) -> None:
    def run(out: Path, seed: int) -> str:
        plan = MergePlan(
            method="dare_ties",
            parents=parents(llama_a, llama_b),
            base=MergeParent("base", llama_base),
            params={"density": 0.4},
            seed=seed,
            dtype="bfloat16",
        )
        merge(plan, out)
        return digest(out)

    first, second, other = run(tmp_path / "1", 5), run(tmp_path / "2", 5), run(tmp_path / "3", 6)
    assert first == second
    assert first != other


def test_coefficients_vary_per_layer_and_per_filter(
    tmp_path: Path, llama_a: Path, llama_b: Path
) -> None:
    plan = MergePlan(
        method="slerp",
        parents=parents(llama_a, llama_b),
        # t goes 0 -> 1 over the two layers; attention of layer 1 is pinned to the first parent
        params={"t": (0.0, 1.0)},
        overrides=(Override("model.layers.1.self_attn.*", {"t": 0.0}),),
    )
    merge(plan, tmp_path / "out")
    a, b, m = load_state(llama_a), load_state(llama_b), load_state(tmp_path / "out")
    assert torch.equal(
        m["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"]
    )
    assert torch.equal(
        m["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"]
    )
    assert torch.equal(
        m["model.layers.1.self_attn.q_proj.weight"], a["model.layers.1.self_attn.q_proj.weight"]
    )
    # outside the numbered layers the list's first value applies
    assert torch.equal(m["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_per_parent_override_weights(tmp_path: Path, llama_a: Path, llama_b: Path) -> None:
    plan = MergePlan(
        method="linear",
        parents=parents(llama_a, llama_b),
        overrides=(Override("*.mlp.*", parent_params={"p1": {"weight": 3.0}}),),
    )
    merge(plan, tmp_path / "out")
    a, b, m = load_state(llama_a), load_state(llama_b), load_state(tmp_path / "out")
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(m[name], (a[name] + 3 * b[name]) / 4)
    other = "model.layers.0.self_attn.o_proj.weight"
    torch.testing.assert_close(m[other], (a[other] + b[other]) / 2)


def test_shape_mismatch_is_refused_naming_the_field(
    tmp_path: Path, llama_a: Path, tokenizer_dir: Path
) -> None:
    wide = tiny_llama(tmp_path / "wide", tokenizer_dir, hidden=48)
    plan = MergePlan(method="linear", parents=parents(llama_a, wide))
    with pytest.raises(IncompatibleParentsError, match=r"config field 'head_dim' differs: 8 != 12"):
        merge(plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tensor_mismatches_are_refused_naming_the_tensor(tmp_path: Path, llama_a: Path) -> None:
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(llama_a, other)
    state = load_file(other / "model.safetensors")
    state["model.norm.weight"] = torch.ones(33)
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IncompatibleParentsError, match=r"'model.norm.weight' has shape \[32\]"):
        merge(MergePlan(method="linear", parents=parents(llama_a, other)), tmp_path / "o1")
    del state["model.norm.weight"]
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IncompatibleParentsError, match=r"'model\.norm\.weight' is missing"):
        merge(MergePlan(method="linear", parents=parents(llama_a, other)), tmp_path / "o2")


def test_tokenizer_mismatch_is_refused(tmp_path: Path, llama_a: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(llama_a, other)
    data = json.loads((other / "tokenizer.json").read_text())
    data["model"]["vocab"]["<extra>"] = 10_000
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(IncompatibleParentsError, match=r"tokenizer file 'tokenizer\.json' differs"):
        merge(MergePlan(method="linear", parents=parents(llama_a, other)), tmp_path / "out")


def test_method_preconditions_are_checked_before_reading(tmp_path: Path, llama_a: Path) -> None:
    with pytest.raises(MergeConfigError, match="needs a base"):
        merge(MergePlan(method="ties", parents=parents(llama_a, llama_a)), tmp_path / "out")
    with pytest.raises(MergeConfigError, match="unknown merge method"):
        merge(MergePlan(method="frankenmerge", parents=parents(llama_a)), tmp_path / "out")


def test_gpt2_and_bf16_merge(tmp_path: Path, gpt2_a: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ._models import tiny_gpt2

    other = tiny_gpt2(tmp_path / "g2", tokenizer_dir, seed=9)
    plan = MergePlan(
        method="task_arithmetic",
        parents=(MergeParent("g2", other),),
        base=MergeParent("base", gpt2_a),
        params={"scale": 0.5},
        dtype="bfloat16",
    )
    merge(plan, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) in ("bfloat16", None)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert next(model.parameters()).dtype == torch.bfloat16
    out = model(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(out.float()).all()


def test_the_apis_method_sets_are_what_the_engine_registers() -> None:
    """Admission refuses what the engine would: a base, a density or weights where the method
    (as registered) needs or reads them."""
    assert {n for n, m in METHODS.items() if m.requires_base} == METHODS_WITH_BASE
    assert {n for n, m in METHODS.items() if "weight" not in m.params} == UNWEIGHTED_METHODS
    assert {n for n, m in METHODS.items() if "density" in m.params} == SPARSIFYING_METHODS
