"""``studbook breed`` on bad input: one clear line per problem, by file and field, never a
traceback, and the user's text shown as written (never read as Rich markup or obeyed by the
terminal)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result
from tests.builders import Body
from tests.manifests import example
from typer.testing import CliRunner

from studbook.cli import _clean, app


def _write(directory: Path, name: str, *documents: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump_all(documents))
    return path


def _breed(directory: Path, workspace: Path) -> Result:
    # Wide enough that Rich does not wrap the lines the tests look for.
    return CliRunner().invoke(
        app, ["breed", str(directory), "--workspace", str(workspace)], env={"COLUMNS": "1000"}
    )


@pytest.mark.parametrize(
    "text",
    ["[/x]", "[link=https://example.invalid]click[/link]", "^[a-z]+[.]v[0-9]$", ":warning:"],
)
def test_an_api_version_is_shown_as_written(tmp_path: Path, text: str) -> None:
    manifest = example("founder-import")
    manifest["apiVersion"] = text
    path = _write(tmp_path / "m", "founder.yaml", manifest)
    result = _breed(tmp_path / "m", tmp_path / "ws")
    assert result.exit_code == 2, result.output
    expected = f"{path}: apiVersion: expected breeding.studbook.dev/v1alpha1, got {text!r}"
    assert expected in result.output


def test_a_yaml_error_shows_its_line_as_written(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "broken.yaml"
    path.write_text("kind: [Descendant [/x] [bold]\n")
    result = _breed(tmp_path / "m", tmp_path / "ws")
    assert result.exit_code == 2, result.output
    assert f"{path}: not valid YAML" in result.output
    assert "kind: [Descendant [/x] [bold]" in result.output


def test_control_characters_are_shown_not_obeyed() -> None:
    line = "\x1b[32mstep 3/10\x1b[0m loss 0.5\x07\x1b]0;title\x07 \u202eevil"
    assert _clean(line) == "step 3/10 loss 0.5\\x07\\x1b]0;title\\x07 \\u202eevil"
    assert _clean("two\nlines\tand a tab") == "two\nlines\tand a tab"


def _lineage(directory: Path, grandchild_license: str) -> Path:
    """A founder, its LoRA child and a grandchild; returns the grandchild's file."""
    _write(directory, "governance.yaml", example("policy"), example("suite"))
    founder = Body.of("founder-import").set("spec.operator.import.uri", "no/such/model").manifest
    _write(directory, "founder.yaml", founder)
    _write(directory, "child.yaml", example("lora-specialist"))
    grandchild = (
        Body.of("lora-specialist")
        .set("metadata.name", "minilm-grandchild")
        .set("spec.parents", [{"name": "minilm-sentiment"}])
        .set("spec.license", grandchild_license)
        .manifest
    )
    return _write(directory, "grandchild.yaml", grandchild)


def test_a_grandchild_the_policy_refuses_stops_the_set_before_any_step(tmp_path: Path) -> None:
    path = _lineage(tmp_path / "m", "Proprietary")
    workspace = tmp_path / "ws"
    result = _breed(tmp_path / "m", workspace)
    assert result.exit_code == 1, result.output
    assert (
        f"{path}: spec.license: LicenseConflict: licence Proprietary (spec.license) is not"
        " allowed by the policy" in result.output
    )
    registry = json.loads((workspace / "registry.json").read_text())
    assert set(registry) == {"minilm-grandchild"}
    assert registry["minilm-grandchild"]["status"]["phase"] == "Rejected"
    # Nothing ran: no step of the founder (whose import would fail) nor of the child.
    runs = workspace / "store" / "runs" / "local"
    assert not (runs / "minilm-base").exists() and not (runs / "minilm-sentiment").exists()


def test_a_breeding_run_with_an_unknown_parent_is_refused_before_any_step(
    tmp_path: Path,
) -> None:
    _lineage(tmp_path / "m", "Apache-2.0")
    path = _write(tmp_path / "m", "search.yaml", example("breeding-run"))
    result = _breed(tmp_path / "m", tmp_path / "ws")
    assert result.exit_code == 2, result.output
    assert f"{path}: spec.parentPool[2].name: no Descendant 'minilm-topic'" in result.output
    assert not (tmp_path / "ws").exists()


def test_a_breeding_run_the_policy_refuses_stops_the_set_before_any_step(
    tmp_path: Path,
) -> None:
    _lineage(tmp_path / "m", "Apache-2.0")
    run = (
        Body.of("breeding-run")
        .set("spec.parentPool", [{"name": "minilm-base"}, {"name": "minilm-sentiment"}])
        .set("spec.objectives", [{"metric": "sentiment-gate/accuracy"}])
        .manifest
    )
    path = _write(tmp_path / "m", "search.yaml", run)
    workspace = tmp_path / "ws"
    result = _breed(tmp_path / "m", workspace)
    assert result.exit_code == 1, result.output
    assert (
        f"{path}: spec.objectives[0].metric: InvalidSpec: sentiment-gate/accuracy:"
        " sentiment-gate is a gate dataset of suite sentiment-topic" in result.output
    )
    runs = json.loads((workspace / "breedingruns.json").read_text())
    assert runs["sentiment-topic-search"]["status"]["phase"] == "Failed"
    assert not (workspace / "store" / "runs" / "local" / "minilm-base").exists()


def test_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = _breed(tmp_path / "nowhere", tmp_path / "ws")
    assert result.exit_code == 2 and f"{tmp_path / 'nowhere'}: not a directory" in result.output
