"""The typed API: examples, generated CRDs, refusals of wrong manifests, import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from tests.manifests import EXAMPLES, WRONG_MANIFESTS, example

from studbook.api import KINDS, ManifestError, parse_manifest
from studbook.api.crdgen import crd, crd_filename, reference
from studbook.api.scorecard import scorecard_json_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_validates_against_model_and_generated_schema(name: str) -> None:
    manifest = example(name)
    resource = parse_manifest(manifest, name)
    assert resource.kind_name() == manifest["kind"]
    validator = jsonschema.Draft4Validator(_schema(manifest["kind"]))
    validator.validate(manifest)
    # What the operator writes back (defaults filled in) must fit the schema too.
    validator.validate(resource.to_wire())


def test_every_kind_has_an_example() -> None:
    assert {example(n)["kind"] for n in EXAMPLE_NAMES} == set(KINDS)


def test_committed_crds_equal_generated() -> None:
    for cls in KINDS.values():
        generated = yaml.safe_load(
            "\n".join(line for line in (ROOT / "crds" / crd_filename(cls)).read_text().splitlines())
        )
        assert generated == crd(cls), f"crds/{crd_filename(cls)} is stale: run make crds"
        chart = ROOT / "charts" / "studbook" / "crds" / crd_filename(cls)
        assert chart.read_text() == (ROOT / "crds" / crd_filename(cls)).read_text()
    assert (ROOT / "docs" / "api.md").read_text() == reference(list(KINDS.values()))
    published = json.loads((ROOT / "docs" / "scorecard.schema.json").read_text())
    assert published == scorecard_json_schema()


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generated_schema_is_structural(kind: str) -> None:
    schema = _schema(kind)
    for path, node in _walk(schema):
        if path.endswith("x-kubernetes-validations") or "/default" in path:
            continue
        forbidden = {"$ref", "anyOf", "oneOf", "allOf", "const", "title"} & node.keys()
        assert not forbidden, f"{kind} {path}: {forbidden}"
        if "properties" in node:
            assert node.get("type") == "object", f"{kind} {path} lacks type object"
            assert "additionalProperties" not in node, path
            for name, prop in node["properties"].items():
                if name != "metadata":
                    assert prop.get("description"), f"{kind} {path}/{name} has no description"
        if isinstance(node.get("exclusiveMinimum"), float | int):
            assert isinstance(node["exclusiveMinimum"], bool), path


def test_crd_carries_kubernetes_conventions() -> None:
    desc = crd(KINDS["Descendant"])
    version = desc["spec"]["versions"][0]
    assert desc["spec"]["names"]["shortNames"] == ["desc"]
    assert desc["spec"]["names"]["categories"] == ["breeding"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"
    root = version["schema"]["openAPIV3Schema"]
    spec_rules = [r["rule"] for r in root["properties"]["spec"]["x-kubernetes-validations"]]
    assert spec_rules[0] == "self == oldSelf"
    conditions = root["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    operator = root["properties"]["spec"]["properties"]["operator"]
    assert "import" in operator["properties"]
    union = operator["x-kubernetes-validations"][0]["rule"]
    assert "has(self.__import__)" in union and "self.kind == 'merge'" in union
    policy = crd(KINDS["BreedingPolicy"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "x-kubernetes-validations" not in policy["properties"]["spec"] or all(
        r["rule"] != "self == oldSelf"
        for r in policy["properties"]["spec"]["x-kubernetes-validations"]
    )


def test_at_least_25_wrong_manifests() -> None:
    assert len(WRONG_MANIFESTS) >= 25
    assert len({w.id for w in WRONG_MANIFESTS}) == len(WRONG_MANIFESTS)


@pytest.mark.parametrize("wrong", WRONG_MANIFESTS, ids=lambda w: w.id)
def test_wrong_manifest_is_refused_naming_the_field(wrong: Any) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(wrong.build(), f"{wrong.id}.yaml")
    problems = caught.value.problems
    assert any(p.field == wrong.field and wrong.words in p.message for p in problems), (
        f"expected '{wrong.field}: ...{wrong.words}...' in\n{caught.value}"
    )
    assert f"{wrong.id}.yaml" in str(caught.value)


def test_int4_per_group_quantization_is_accepted_by_model_and_schema() -> None:
    manifest = example("quantization")
    manifest["spec"]["operator"]["quantize"].update(
        scheme="int4-weight-only", granularity="per-group", groupSize=128
    )
    manifest["spec"]["compatibility"]["quantization"] = "int4"
    resource = parse_manifest(manifest)
    validator = jsonschema.Draft4Validator(_schema("Descendant"))
    validator.validate(manifest)
    validator.validate(resource.to_wire())
    assert resource.to_wire()["spec"]["operator"]["quantize"]["groupSize"] == 128


def test_unknown_kind_and_api_version_are_refused() -> None:
    manifest = example("policy")
    with pytest.raises(ManifestError, match="kind: unknown kind 'Policy'"):
        parse_manifest({**manifest, "kind": "Policy"})
    with pytest.raises(
        ManifestError, match=r"apiVersion: expected breeding\.studbook\.dev/v1alpha1"
    ):
        parse_manifest({**manifest, "apiVersion": "v1"})


def test_wire_round_trip_is_stable() -> None:
    for name in EXAMPLE_NAMES:
        resource = parse_manifest(example(name))
        wire = resource.to_wire()
        assert parse_manifest(json.loads(json.dumps(wire))).to_wire() == wire


def test_the_api_and_the_operator_import_no_ml_stack() -> None:
    code = (
        "import sys, studbook, studbook.api, studbook.api.crdgen, studbook.cli, "
        "studbook.controllers.handlers; "
        "bad = [m for m in ('torch', 'transformers', 'peft', 'safetensors') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
