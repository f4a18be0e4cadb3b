"""``studbook report`` on a real workspace: two founders, their merge and a refused child."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.builders import Body

from studbook.api.scorecard import Scorecard
from studbook.artifacts import Store
from studbook.local.report import (
    headline,
    human_bytes,
    layered_layout,
    layers,
    load,
    objective_of,
)
from studbook_trainer.operators.simple import directory_id

from .conftest import Data, Models, suite_spec

OBJECTIVE = ["sentiment-gate/accuracy", "topic-gate/accuracy"]
"""The objective of :func:`suite_spec`: the first metric of its objective datasets."""


def _founder(name: str, model: Path, niche: str) -> dict[str, Any]:
    return (
        Body.of("founder-import")
        .set("metadata.name", name)
        .set("spec.operator.import.uri", str(model))
        .set("spec.operator.import.digest", directory_id(model))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .set("spec.niche.taxonomy", [f"classification/{niche}"])
        .manifest
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, models: Models, data: Data) -> Path:
    root = tmp_path_factory.mktemp("report")
    manifests = root / "manifests"
    manifests.mkdir()
    suite = Body.of("suite").set("spec", suite_spec(data)).manifest
    policy = Body.of("policy").set("spec.evaluationGates", {}).manifest
    merged = (
        Body.of("ties-merge")
        .set("metadata.name", "minilm-merged")
        .set("spec.parents", [{"name": "minilm-sentiment"}, {"name": "minilm-topic"}])
        .set(
            "spec.operator.merge",
            {
                "method": "linear",
                "weights": [
                    {"parent": "minilm-sentiment", "weight": 0.5},
                    {"parent": "minilm-topic", "weight": 0.5},
                ],
                "dtype": "float32",
            },
        )
        .manifest
    )
    # Beyond the policy's pruning budget: refused at admission, before any training.
    refused = (
        Body.of("quantization")
        .set("metadata.name", "minilm-overpruned")
        .set("spec.parents", [{"name": "minilm-sentiment"}])
        .set(
            "spec.operator",
            {"kind": "prune", "prune": {"method": "magnitude", "targetSparsity": 0.9}},
        )
        .set("spec.data", [])
        .set("spec.compatibility.quantization", "none")
        .manifest
    )
    documents = [
        policy,
        suite,
        _founder("minilm-sentiment", models.sentiment, "sentiment"),
        _founder("minilm-topic", models.topic, "topic"),
        merged,
    ]
    (manifests / "all.yaml").write_text(yaml.safe_dump_all(documents))
    space = root / "workspace"
    command = [sys.executable, "-m", "studbook", "breed", str(manifests), "--workspace", str(space)]
    bred = subprocess.run(command, capture_output=True, text=True)
    # Added later, the refused child stops that run before any step and is recorded Rejected.
    (manifests / "all.yaml").write_text(yaml.safe_dump_all([*documents, refused]))
    bred = subprocess.run(command, capture_output=True, text=True)
    registry = json.loads((space / "registry.json").read_text())
    phases = {name: entry["status"]["phase"] for name, entry in registry.items()}
    assert phases == {
        "minilm-sentiment": "Ready",
        "minilm-topic": "Ready",
        "minilm-merged": "Ready",
        "minilm-overpruned": "Rejected",
    }, bred.stdout + bred.stderr
    return space


def _report(workspace: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "studbook", "report", "--workspace", str(workspace)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="module")
def registry(workspace: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((workspace / "registry.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def cards(workspace: Path, registry: dict[str, Any]) -> dict[str, Scorecard]:
    """Each evaluated descendant's scorecard, as signed into the store."""
    store = Store.open(workspace / "store")
    found = {}
    for name, entry in registry.items():
        artifact = entry["status"].get("artifact")
        if artifact is not None:
            [(blob, bundle)] = store.scorecards(artifact["id"])
            assert bundle is not None
            found[name] = Scorecard.model_validate_json(blob.data)
    return found


@pytest.fixture(scope="module")
def report(workspace: Path) -> Path:
    done = _report(workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    out = workspace / "report"
    assert done.stdout.split() == [
        str(out / "report.html"),
        str(out / "report.md"),
        str(out / "lineage.svg"),
    ]
    return out


class _Page(HTMLParser):
    """Checks that every element is closed in order, and collects the tables' cells."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []
        self.tables: list[list[list[tuple[str, str]]]] = []
        self.items: list[str] = []
        self._cell: list[str] | None = None
        self._cell_class = ""
        self._item: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        self.open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._cell_class = [], dict(attrs).get("class") or ""
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"</{tag}> closes nothing open")
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(("".join(self._cell), self._cell_class))
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.items.append("".join(self._item))
            self._item = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._item):
            if part is not None:
                part.append(data)


@pytest.fixture(scope="module")
def page(report: Path) -> _Page:
    parsed = _Page()
    parsed.feed((report / "report.html").read_text())
    parsed.close()
    return parsed


def _objective(values: dict[str, float]) -> float:
    return sum(values[k] for k in OBJECTIVE) / len(OBJECTIVE)


def test_lineage_picture_has_a_box_per_descendant_and_an_arrow_per_parent(
    report: Path, registry: dict[str, Any]
) -> None:
    svg = ET.parse(report / "lineage.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {g.get("data-name"): g for g in svg.iter(f"{ns}g") if g.get("class") == "node"}
    assert set(boxes) == set(registry)
    by_id = {
        e["status"]["artifact"]["id"]: name
        for name, e in registry.items()
        if e["status"].get("artifact")
    }
    links = {
        (by_id[parent], name)
        for name, e in registry.items()
        for parent in (e["status"].get("lineage") or {}).get("parentIds", [])
    }
    assert links == {("minilm-sentiment", "minilm-merged"), ("minilm-topic", "minilm-merged")}
    edges = {
        (p.get("data-parent"), p.get("data-child"))
        for p in svg.iter(f"{ns}path")
        if p.get("class") == "edge"
    }
    assert edges == links
    stroke = {"pass": "#2e7d32", "fail": "#c62828", None: "#757575", "archived": "#e65100"}
    for name, box in boxes.items():
        status = registry[name]["status"]
        verdict = (status.get("scorecard") or {}).get("verdict")
        key = "archived" if status.get("stage") == "archived" else verdict
        rect = box.find(f"{ns}rect")
        assert rect is not None and rect.get("stroke") == stroke[key], name
        assert registry[name]["status"].get("lineage", {}).get("operator", "") in "".join(
            box.itertext()
        )


def test_page_is_well_formed_and_self_contained(report: Path, page: _Page) -> None:
    text = (report / "report.html").read_text()
    assert page.errors == [] and page.open == []
    assert "<script" not in text and "src=" not in text and "<link" not in text
    # The lineage picture and the charts are inline.
    assert text.count("<svg") >= 4 and 'class="node"' in text


def test_scorecards_side_by_side_with_real_values_and_the_best_marked(
    page: _Page, cards: dict[str, Scorecard]
) -> None:
    [table] = [t for t in page.tables if [c for c, _ in t[0][:2]] == ["metric", "dataset"]]
    names = [c for c, _ in table[0][2:]]
    assert sorted(names) == sorted(cards)
    rows = {(row[0][0], row[1][0]): row[2:] for row in table[1:]}
    for name, card in cards.items():
        column = names.index(name)
        for m in card.metrics:
            text, css = rows[(m.metric, m.dataset)][column]
            if m.metric == "size_bytes":
                assert text == human_bytes(int(m.value))
                continue
            assert text.startswith(f"{m.value:.3f}"), (name, m.key, text)
            if m.ci_low is not None and m.ci_high is not None:
                assert f"[{m.ci_low:.3f}, {m.ci_high:.3f}]" in text
            values = [c.metric(m.key).value for c in cards.values()]  # type: ignore[union-attr]
            best = max(values) if m.direction == "maximize" else min(values)
            marked = len(set(values)) > 1 and m.value == best
            assert (css == "best") == marked, (name, m.key)


def test_headline_names_the_best_and_judges_the_merge_honestly(
    report: Path, page: _Page, cards: dict[str, Scorecard]
) -> None:
    scores = {name: _objective({m.key: m.value for m in c.metrics}) for name, c in cards.items()}
    top = max(scores.values())
    best = sorted(name for name, v in scores.items() if abs(v - top) < 1e-9)
    first = page.items[0]
    if len(best) == 1:
        assert first.startswith(f"{best[0]} scores best on the objective"), first
    else:
        assert " and ".join(best) in first and "tie for the best score" in first, first
    assert f": {top:.3f}" in first
    merged = cards["minilm-merged"]
    parents = {c.name: _objective(c.metrics) for c in merged.comparisons if c.role == "parent"}
    assert set(parents) == {"minilm-sentiment", "minilm-topic"}
    verdicts = ("minilm-merged beats", "minilm-merged does not beat")
    [judged] = [line for line in page.items if line.startswith(verdicts)]
    if all(scores["minilm-merged"] > v for v in parents.values()):
        assert judged.startswith("minilm-merged beats both its parents"), judged
    else:
        assert judged.startswith("minilm-merged does not beat"), judged
    assert f"({scores['minilm-merged']:.3f} vs" in judged
    markdown = (report / "report.md").read_text()
    assert f"- {first}" in markdown and f"- {judged}" in markdown


def test_headline_says_so_when_a_merge_does_not_beat_its_parents(workspace: Path) -> None:
    # The real report, with the merge's objective put below its weaker parent.
    model = load(workspace)
    [merged] = [e for e in model.entries if e.name == "minilm-merged"]
    assert merged.scorecard is not None and merged.scorecard.objective is not None
    parents = {
        c.name: objective_of(merged.scorecard, c.metrics)
        for c in merged.scorecard.comparisons
        if c.role == "parent"
    }
    low = min(v for v in parents.values() if v is not None) - 0.1
    objective = merged.scorecard.objective.model_copy(update={"value": low})
    worse = replace(merged, scorecard=merged.scorecard.model_copy(update={"objective": objective}))
    entries = tuple(worse if e is merged else e for e in model.entries)
    lines = headline(replace(model, entries=entries))
    [judged] = [line for line in lines if line.startswith("minilm-merged ")]
    expected = " or ".join(f"{n} ({low:.3f} vs {v:.3f})" for n, v in parents.items())
    assert judged == f"minilm-merged does not beat {expected} on the objective.", judged


def test_comparisons_sizes_and_verdicts(
    report: Path, page: _Page, registry: dict[str, Any], cards: dict[str, Scorecard]
) -> None:
    merged = cards["minilm-merged"]
    assert merged.objective is not None and merged.objective.net_gain is not None
    [compared] = [t for t in page.tables if t[0][0][0] == "model"]
    roles = {row[0][0]: row[1][0] for row in compared[1:]}
    assert roles == {
        "minilm-merged": "subject",
        **{c.name: c.role for c in merged.comparisons},
    }
    assert {"parent", "baseline", "ensemble"} <= set(roles.values())
    text = (report / "report.html").read_text()
    assert f"net gain over the best parent {merged.objective.net_gain:+.3f}" in text
    [costs] = [t for t in page.tables if t[0][0][0] == "descendant" and len(t[0]) == 5]
    for row in costs[1:]:
        card = cards.get(row[0][0])
        if card is not None and card.profile is not None:
            assert row[2][0].startswith(human_bytes(card.profile.size_bytes))
            assert row[4][0] == f"{card.profile.latency_ms_per_example:.2f} ms"
    [verdicts] = [t for t in page.tables if [c for c, _ in t[0]][-2:] == ["suite", "policy"]]
    by_name = {row[0][0]: [c for c, _ in row] for row in verdicts[1:]}
    for name, entry in registry.items():
        status = entry["status"]
        verdict = (status.get("scorecard") or {}).get("verdict") or "none"
        assert by_name[name][1:4] == [status["phase"], status.get("stage") or "—", verdict]
    assert registry["minilm-overpruned"]["status"]["message"] in by_name["minilm-overpruned"][5]
    markdown = (report / "report.md").read_text()
    assert "![lineage graph](lineage.svg)" in markdown
    assert "| minilm-overpruned | Rejected |" in markdown


def test_objectives_of_comparisons_agree_with_the_scorecard(cards: dict[str, Scorecard]) -> None:
    for card in cards.values():
        assert card.objective is not None
        own = objective_of(card, {m.key: m.value for m in card.metrics})
        assert own == pytest.approx(card.objective.value, abs=1e-9)
        parents = [objective_of(card, c.metrics) for c in card.comparisons if c.role == "parent"]
        if card.objective.best_parent_value is not None:
            assert max(v for v in parents if v is not None) == pytest.approx(
                card.objective.best_parent_value, abs=1e-9
            )


def test_report_refuses_what_is_no_workspace(tmp_path: Path) -> None:
    missing = _report(tmp_path / "nowhere")
    assert missing.returncode == 1
    assert "WorkspaceNotFound" in missing.stderr and "is not a breeding workspace" in missing.stderr
    (tmp_path / "registry.json").write_text("{}")
    empty = _report(tmp_path)
    assert empty.returncode == 1 and "records no descendant yet" in empty.stderr


def test_report_refuses_a_descendant_whose_scorecard_is_gone(
    workspace: Path, tmp_path: Path
) -> None:
    # A copy of the workspace sharing the sealed files (hard links), less one scorecard.
    copy = tmp_path / "workspace"
    shutil.copytree(workspace, copy, copy_function=os.link, ignore=shutil.ignore_patterns("report"))
    registry = json.loads((copy / "registry.json").read_text())
    artifact = registry["minilm-topic"]["status"]["artifact"]["id"].removeprefix("sha256:")
    for card in (copy / "store" / "sha256" / artifact / "scorecards").glob("*.json"):
        if not card.name.endswith(".sigstore.json"):
            card.unlink()
    refused = _report(copy)
    assert refused.returncode == 1
    assert "ScorecardMissing" in refused.stderr and "minilm-topic" in refused.stderr


def test_layers_of_a_diamond_and_no_box_overlaps() -> None:
    parents = {"founder": [], "a": ["founder"], "b": ["founder"], "merge": ["a", "b"]}
    assert layers(parents) == {"founder": 0, "a": 1, "b": 1, "merge": 2}
    widths = {"founder": 140.0, "a": 100.0, "b": 180.0, "merge": 120.0}
    layout = layered_layout(parents, widths)
    boxes = layout.boxes
    assert {n: b.layer for n, b in boxes.items()} == layers(parents)
    assert {n: b.width for n, b in boxes.items()} == widths
    for name, box in boxes.items():
        assert box.x >= 0 and box.x + box.width <= layout.width
        assert box.y >= 0 and box.y + box.height <= layout.height
        for other, second in boxes.items():
            assert name == other or not box.overlaps(second), (name, other)
        for parent in parents[name]:
            assert boxes[parent].y + boxes[parent].height < box.y
    assert boxes["a"].x + boxes["a"].width < boxes["b"].x

    # The merge sits under the middle of its parents, the parents under the founder's middle.
    def middle(*names: str) -> float:
        return sum(boxes[n].x + boxes[n].width / 2 for n in names) / len(names)

    assert middle("merge") == pytest.approx(middle("a", "b"))
    assert middle("a", "b") == pytest.approx(middle("founder"))
    with pytest.raises(ValueError, match="cycle"):
        layers({"a": ["b"], "b": ["a"]})
