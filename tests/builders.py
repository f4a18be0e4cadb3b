"""Fluent builders of resource bodies and parent facts for table tests."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from studbook.api import BreedingPolicy, BreedingRun, Descendant, parse_manifest
from studbook.api.common import Compatibility
from studbook.breeding.admission import ParentFacts
from tests.manifests import Manifest, example

MINILM = {
    "baseFamily": "minilm-l6",
    "architecture": "BertForSequenceClassification",
    "tokenizerId": "bert-base-uncased-wordpiece-30522",
}


class Body:
    """A manifest under construction: start from an example, change what the case is about."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = copy.deepcopy(manifest)

    @classmethod
    def of(cls, name: str) -> Body:
        return cls(example(name))

    def set(self, path: str, value: Any) -> Body:
        *parents, last = path.split(".")
        node: Any = self.manifest
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(last) if last.isdigit() else last] = value
        return self

    def descendant(self) -> Descendant:
        resource = parse_manifest(self.manifest)
        assert isinstance(resource, Descendant)
        return resource

    def policy(self) -> BreedingPolicy:
        resource = parse_manifest(self.manifest)
        assert isinstance(resource, BreedingPolicy)
        return resource

    def run(self) -> BreedingRun:
        resource = parse_manifest(self.manifest)
        assert isinstance(resource, BreedingRun)
        return resource


class Parent:
    """Facts about a parent: Ready, signed, intact and MiniLM-compatible unless told otherwise."""

    def __init__(self, name: str) -> None:
        self.fields: dict[str, Any] = {
            "name": name,
            "ready": True,
            "signed": True,
            "intact": True,
            "artifact_id": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            "license": "Apache-2.0",
        }
        self.compat = dict(MINILM)

    def with_(self, **fields: Any) -> Parent:
        self.fields.update(fields)
        return self

    def compatible(self, **changes: str) -> Parent:
        self.compat.update(changes)
        return self

    def build(self) -> ParentFacts:
        return ParentFacts(compatibility=Compatibility.model_validate(self.compat), **self.fields)
