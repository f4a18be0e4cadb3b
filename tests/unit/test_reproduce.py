"""``studbook reproduce``: a bred artifact re-bred from its lineage matches; a recipe that is not
its lineage's is refused before any step; a signed artifact its recipe does not give differs,
naming the first differing file."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.builders import Body
from tests.manifests import EXAMPLES
from typer.testing import CliRunner, Result

from studbook.api import Descendant, parse_manifest
from studbook.artifacts import KeySigner, Lineage, Manifest, Store, sign_artifact
from studbook.artifacts.digest import DigestParams, FileEntry
from studbook.cli import app
from studbook.local.reproduce import Outcome, first_difference

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# -- the recipe's config hash, and the comparison ------------------------------------------------


def _example_descendants() -> list[Descendant]:
    found = []
    for path in sorted([*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("quickstart/*.yaml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "Descendant":
                resource = parse_manifest(document)
                assert isinstance(resource, Descendant)
                found.append(resource)
    return found


@pytest.mark.parametrize("descendant", _example_descendants(), ids=lambda d: d.metadata.name)
def test_the_content_config_is_the_spec_less_where_a_founder_comes_from(
    descendant: Descendant,
) -> None:
    # The breed step hashes it into lineage.json, and reproduce checks a recipe against it.
    operator = descendant.spec.operator
    wire = operator.to_wire()[operator.kind]
    if operator.kind == "import":
        assert set(wire) - set(operator.content_config()) == {"uri"}
        moved = operator.model_copy(
            update={"import_": operator.import_.model_copy(update={"uri": "s3://elsewhere/x"})}
        )
        assert moved.content_config() == operator.content_config()
    else:
        assert operator.content_config() == wire


def _manifest(*files: tuple[str, int, str]) -> Manifest:
    entries = [FileEntry(path, size, digest * 64) for path, size, digest in files]
    return Manifest.build([FileEntry("lineage.json", 10, "0" * 64), *entries], DigestParams())


def test_the_first_differing_file_in_path_order() -> None:
    original = _manifest(("a.json", 3, "1"), ("model.safetensors", 8, "2"), ("z.txt", 1, "3"))
    same = _manifest(("a.json", 3, "1"), ("model.safetensors", 8, "2"), ("z.txt", 1, "3"))
    assert first_difference(original, same) is None
    changed = _manifest(("a.json", 3, "1"), ("model.safetensors", 9, "4"), ("z.txt", 1, "5"))
    found = first_difference(original, changed)
    assert found is not None and found.path == "model.safetensors"
    assert found.original and found.original.size == 8 and found.rebred and found.rebred.size == 9
    # A file on one side only differs where it sorts.
    extra = _manifest(("a.json", 3, "1"), ("b.json", 2, "6"), ("model.safetensors", 8, "2"))
    found = first_difference(original, extra)
    assert found is not None and (found.path, found.original) == ("b.json", None)

    lineage = Lineage(operator="prune", config_hash="sha256:" + "0" * 64, code_version="1")
    assert str(Outcome(original, lineage, same, lineage)) == f"match: {original.id}"
    rebred = Lineage(operator="prune", config_hash="sha256:" + "0" * 64, code_version="2")
    assert str(Outcome(original, lineage, changed, rebred)) == (
        f"differs: re-bred {changed.id}, first differing file model.safetensors "
        f"(sha256 {'2' * 12}… vs {'4' * 12}…, 8 vs 9 bytes); bred by trainer 1, re-bred by 2"
    )
    assert "first differing file b.json (only in the re-bred, 2 bytes)" in str(
        Outcome(original, lineage, extra, lineage)
    )


# -- end to end: a founder and a pruned child, bred by ``studbook breed`` ------------------------


@dataclass(frozen=True)
class Bred:
    manifests: Path
    workspace: Path
    registry: dict[str, Any]

    def artifact(self, name: str) -> str:
        artifact: str = self.registry[name]["status"]["artifact"]["id"]
        return artifact


def _write(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def _pruned(sparsity: float) -> dict[str, Any]:
    return (
        Body.of("quantization")
        .set("metadata.name", "minilm-pruned")
        .set("spec.parents", [{"name": "minilm-base"}])
        .set(
            "spec.operator",
            {"kind": "prune", "prune": {"method": "magnitude", "targetSparsity": sparsity}},
        )
        .set("spec.data", [])
        .set("spec.compatibility.quantization", "none")
        .manifest
    )


def _studbook(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def bred(tmp_path_factory: pytest.TempPathFactory) -> Bred:
    from tests.unit.evaluation import _fixtures as fx

    from studbook_trainer.evaluation import bytes_digest
    from studbook_trainer.operators.simple import directory_id

    root = tmp_path_factory.mktemp("reproduce")
    founder = fx.base_classifier(root / "founder")
    gate = fx.write_jsonl(root / "gate.jsonl", fx.splits("sentiment", {"gate": 16})["gate"])
    suite = {
        "version": "1.0.0",
        "datasets": [
            {
                "name": "gate",
                "uri": gate.as_uri(),
                "digest": bytes_digest(gate.read_bytes()),
                "role": "gate",
                "task": "classification",
            }
        ],
        "metrics": [{"name": "accuracy", "dataset": "gate", "direction": "maximize"}],
        "bootstrap": {"samples": 10},
        "compareEnsemble": False,
    }
    manifests = root / "manifests"
    manifests.mkdir()
    _write(
        manifests / "governance.yaml",
        Body.of("policy").set("spec.evaluationGates", {}).manifest,
        Body.of("suite").set("spec", suite).manifest,
    )
    imported = (
        Body.of("founder-import")
        .set("spec.operator.import.uri", str(founder))
        .set("spec.operator.import.digest", directory_id(founder))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .manifest
    )
    _write(manifests / "models.yaml", imported, _pruned(0.3))
    workspace = root / "workspace"
    done = _studbook("breed", str(manifests), "--workspace", str(workspace))
    assert done.exit_code == 0, done.output
    registry = json.loads((workspace / "registry.json").read_text())
    return Bred(manifests, workspace, registry)


@pytest.mark.slow
def test_a_bred_artifact_is_reproduced(bred: Bred, tmp_path: Path) -> None:
    child = bred.artifact("minilm-pruned")
    done = _studbook(
        "reproduce",
        child,
        str(bred.manifests),
        "--workspace",
        str(bred.workspace),
        "--scratch",
        str(tmp_path / "scratch"),
    )
    assert done.exit_code == 0, done.output
    assert "recipe: minilm-pruned" in done.output
    assert "signature: verified, with its ancestors; signed by key:" in done.output
    assert done.output.splitlines()[-1] == f"match: {child}"
    # Re-bred in the scratch store from a verified copy of its parent; the workspace only read.
    scratch = Store.open(tmp_path / "scratch" / "store")
    assert scratch.ids() == sorted([child, bred.artifact("minilm-base")])
    assert Store.open(bred.workspace / "store").signatures(child)


@pytest.mark.slow
def test_a_recipe_that_is_not_the_lineage_is_refused_before_any_step(
    bred: Bred, tmp_path: Path
) -> None:
    changed = tmp_path / "manifests"
    shutil.copytree(bred.manifests, changed)
    models = list(yaml.safe_load_all((changed / "models.yaml").read_text()))
    _write(changed / "models.yaml", models[0], _pruned(0.4))
    scratch = tmp_path / "scratch"
    done = _studbook(
        "reproduce",
        bred.artifact("minilm-pruned"),
        str(changed),
        "--workspace",
        str(bred.workspace),
        "--scratch",
        str(scratch),
    )
    assert done.exit_code == 2, done.output
    line = done.output.strip()
    assert line.startswith("not reproduced: ") and "\n" not in line, line
    assert "minilm-pruned is not the recipe of" in line
    assert "spec.operator.prune: the configuration hashes to sha256:" in line
    assert not scratch.exists(), "nothing ran"

    # A parent's recipe counts too: the founder's digest pins what it imported.
    _write(
        changed / "models.yaml",
        Body(models[0]).set("spec.operator.import.digest", "sha256:" + "1" * 64).manifest,
        _pruned(0.3),
    )
    done = _studbook(
        "reproduce",
        bred.artifact("minilm-pruned"),
        str(changed),
        "--workspace",
        str(bred.workspace),
        "--scratch",
        str(scratch),
    )
    assert done.exit_code == 2, done.output
    assert "spec.parents[0]: minilm-base is not sha256:" in done.output
    assert "spec.operator.import: the configuration hashes to" in done.output
    assert not scratch.exists()


@pytest.mark.slow
def test_a_signed_artifact_its_recipe_does_not_give_differs(bred: Bred, tmp_path: Path) -> None:
    # An artifact that claims the child's lineage, with one file changed, sealed into a copy of
    # the store: its lineage is the child's, so only re-breeding shows it is not what it claims.
    store_dir = tmp_path / "store"
    shutil.copytree(bred.workspace / "store", store_dir)
    store = Store.open(store_dir)
    files = tmp_path / "forged"
    store.fetch(bred.artifact("minilm-pruned"), files)
    config = json.loads((files / "config.json").read_text())
    (files / "config.json").write_text(json.dumps({**config, "note": "not bred"}))
    forged = store.seal(files).id
    key = bred.workspace / "signing" / "key.pem"
    public = tmp_path / "workspace.pub"
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    command = [
        "reproduce",
        forged,
        str(bred.manifests),
        "--store",
        str(store_dir),
        "--trusted-key",
        str(public),
    ]
    unsigned = _studbook(*command)
    assert unsigned.exit_code == 2, unsigned.output
    assert "not reproduced:" in unsigned.output and "signature" in unsigned.output.lower()

    sign_artifact(store, forged, KeySigner(key))
    done = _studbook(*command)
    assert done.exit_code == 1, done.output
    # Found from the manifests: the one descendant whose spec is the forged artifact's lineage.
    assert "recipe: minilm-pruned" in done.output
    last = done.output.splitlines()[-1]
    child = bred.artifact("minilm-pruned")
    assert last.startswith(f"differs: re-bred {child}, first differing file config.json (sha256 ")
    assert " bytes)" in last
