"""What ``studbook breed`` reuses: the whole spec is in the key, so any change runs again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.builders import Body
from tests.manifests import example

from studbook.api.task import ParentArtifact
from studbook.local.manifests import load
from studbook.local.pipeline import _inputs

PARENT = ParentArtifact(name="minilm-base", artifact_id="sha256:" + "1" * 64, uri="store/a")


def _key(tmp_path: Path, child: dict[str, Any]) -> str:
    path = tmp_path / "all.yaml"
    documents = [example("policy"), example("suite"), example("founder-import"), child]
    path.write_text(yaml.safe_dump_all(documents))
    manifests = load([path])
    return _inputs(manifests, manifests.descendants["minilm-sentiment"], [PARENT])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spec.license", "MIT"),
        ("spec.riskTier", "high"),
        ("spec.niche.languages", ["de"]),
        ("spec.resources.gpus", 2),
        ("spec.parents", [{"name": "minilm-base", "artifactId": "sha256:" + "2" * 64}]),
    ],
)
def test_any_change_to_the_spec_changes_the_reuse_key(
    tmp_path: Path, field: str, value: object
) -> None:
    unchanged = _key(tmp_path, example("lora-specialist"))
    assert _key(tmp_path, example("lora-specialist")) == unchanged
    assert _key(tmp_path, Body.of("lora-specialist").set(field, value).manifest) != unchanged
