from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from studbook.artifacts import LineageGraph, Store
from studbook.artifacts.errors import GraphvizNotInstalledError, LineageError

from .conftest import lineage


@pytest.fixture
def family(store: Store, model_dir: Callable[..., Path]) -> dict[str, str]:
    """founder -> lora -> merge(lora, other) -> quant; other is a second founder."""
    ids: dict[str, str] = {}
    ids["founder"] = store.seal(model_dir(seed=1), lineage()).id
    ids["other"] = store.seal(model_dir(seed=2), lineage()).id
    ids["lora"] = store.seal(model_dir(seed=3), lineage(ids["founder"], operator="lora")).id
    ids["merge"] = store.seal(
        model_dir(seed=4), lineage(ids["lora"], ids["other"], operator="merge")
    ).id
    ids["quant"] = store.seal(model_dir(seed=5), lineage(ids["merge"], operator="quantize")).id
    return ids


def test_queries(store: Store, family: dict[str, str]) -> None:
    g = LineageGraph.from_store(store)
    f = family
    assert g.roots() == sorted([f["founder"], f["other"]])
    assert g.ancestors(f["quant"]) == [f["merge"], f["lora"], f["other"], f["founder"]]
    assert g.descendants(f["founder"]) == [f["lora"], f["merge"], f["quant"]]
    assert g.path(f["founder"], f["quant"]) == [f["founder"], f["lora"], f["merge"], f["quant"]]
    assert g.path(f["quant"], f["lora"]) == [f["quant"], f["merge"], f["lora"]]
    with pytest.raises(LineageError):
        g.path(f["founder"], f["other"])
    with pytest.raises(LineageError):
        g.ancestors("sha256:" + "f" * 64)
    assert set(g.family(f["lora"]).ids) == {f["founder"], f["lora"], f["merge"], f["quant"]}


def test_missing_parents_are_shown(store: Store, model_dir: Callable[..., Path]) -> None:
    ghost = "sha256:" + "a" * 64
    child = store.seal(model_dir(), lineage(ghost, operator="lora")).id
    g = LineageGraph.from_store(store)
    assert g.missing() == [ghost]
    assert g.roots() == [ghost]
    assert g.path(ghost, child) == [ghost, child]


def test_exports(store: Store, family: dict[str, str]) -> None:
    g = LineageGraph.from_store(store)
    data = g.to_json()
    assert {n["id"] for n in data["nodes"]} == set(family.values())
    assert {"parent": family["lora"], "child": family["merge"]} in data["edges"]
    assert len(data["edges"]) == 4
    json.dumps(data)
    dot = g.to_dot()
    assert dot.startswith("digraph lineage {")
    assert f'"{family["merge"]}" -> "{family["quant"]}";' in dot
    mermaid = g.to_mermaid()
    assert mermaid.startswith("flowchart TD")
    assert mermaid.count("-->") == 4
    assert "quantize" in mermaid


def test_render(store: Store, family: dict[str, str], tmp_path: Path) -> None:
    g = LineageGraph.from_store(store)
    if shutil.which("dot") is None:
        with pytest.raises(GraphvizNotInstalledError):
            g.render(tmp_path / "lineage.svg")
    else:
        out = g.render(tmp_path / "lineage.svg")
        assert out.read_text().lstrip().startswith(("<?xml", "<svg"))
