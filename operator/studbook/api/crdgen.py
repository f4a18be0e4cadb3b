"""Generate the CRDs (and the API reference) from the pydantic models.

``python -m studbook.api.crdgen --out crds --chart charts/studbook/crds --docs docs/api.md``
writes them; ``--check`` fails when the committed files differ from what the models generate.

Pydantic emits JSON Schema 2020-12; Kubernetes wants structural OpenAPI v3: every type inline (no
``$ref``), no unions, ``exclusiveMinimum`` as a boolean, no ``additionalProperties: false``
beside ``properties``. Optional members become plain optional properties, so the one-of unions
of :class:`~studbook.api.base.OneOf` reach the API server as a discriminator, optional members
and a CEL rule, the Kubernetes union convention.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from studbook import GROUP, VERSION
from studbook.api import KINDS
from studbook.api.resource import Resource
from studbook.api.scorecard import scorecard_json_schema

Schema = dict[str, Any]

_DROP = frozenset({"title", "$defs"})


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Rewrite one pydantic JSON Schema node as a structural OpenAPI v3 schema."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        # Keys beside a $ref (description, default) describe the use and win over the type's.
        node = {**_structural(defs[ref.rsplit("/", 1)[-1]], defs), **node}
    variants = node.pop("anyOf", None)
    if variants is not None:
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) != 1:
            raise ValueError(f"unions have no structural schema; use OneOf instead: {variants}")
        node = {**_structural(kept[0], defs), **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            node[limit] = node[bound]
            node[bound] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "description" in node:
        # kubectl explain shows plain text: one line, Markdown code spans.
        node["description"] = " ".join(node["description"].split()).replace("``", "`")
    if "default" in node:
        node["default"] = _strip_nulls(node["default"])
        if node["default"] is None:
            del node["default"]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    return out


def _columns(cls: type[Resource]) -> list[Schema]:
    columns: list[Schema] = []
    for column in cls.crd.printer_columns:
        entry: Schema = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
        if column.priority:
            entry["priority"] = column.priority
        if column.description:
            entry["description"] = column.description
        columns.append(entry)
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def crd(cls: type[Resource]) -> Schema:
    """The CustomResourceDefinition of one resource class."""
    full = cls.model_json_schema(by_alias=True)
    defs = full.get("$defs", {})
    spec = _structural(full["properties"]["spec"], defs)
    status = _structural(full["properties"]["status"], defs)
    if cls.crd.immutable_spec:
        spec.setdefault("x-kubernetes-validations", []).insert(
            0, {"rule": "self == oldSelf", "message": "spec is immutable once created"}
        )
    kind = cls.kind_name()
    root: Schema = {
        "type": "object",
        "description": " ".join((cls.__doc__ or "").split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "The API group and version."},
            "kind": {"type": "string", "description": "The resource kind."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{cls.crd.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": cls.crd.plural,
                "singular": kind.lower(),
                "shortNames": list(cls.crd.short_names),
                "categories": list(cls.crd.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(cls),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_filename(cls: type[Resource]) -> str:
    """The file a CRD is written to."""
    return f"{GROUP}_{cls.crd.plural}.yaml"


def _dump(document: Schema) -> str:
    header = "# Generated by `make crds` from studbook.api; do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)


def _reference_rows(schema: Schema, path: str) -> Iterator[tuple[str, str, str]]:
    for name, sub in schema.get("properties", {}).items():
        field = f"{path}.{name}" if path else name
        kind = sub.get("type", "object")
        if kind == "array":
            kind = f"[]{sub.get('items', {}).get('type', 'object')}"
        if "enum" in sub:
            kind += " (" + " \\| ".join(f"`{value}`" for value in sub["enum"]) + ")"
        required = name in schema.get("required", [])
        description = " ".join(sub.get("description", "").split())
        yield f"`{field}`" + (" *" if required else ""), kind, description
        if kind.startswith("[]object"):
            yield from _reference_rows(sub["items"], f"{field}[]")
        else:
            yield from _reference_rows(sub, field)


def reference(classes: list[type[Resource]]) -> str:
    """The API reference in Markdown, generated from the same schemas as the CRDs."""
    out = [
        "# API reference",
        "",
        f"Group `{GROUP}`, version `{VERSION}`. Generated by `make crds` from `studbook.api`;"
        " `kubectl explain <kind>.spec` shows the same text. Fields marked * are required.",
        "",
    ]
    for cls in classes:
        schema = crd(cls)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out += [f"## {cls.kind_name()}", "", " ".join((cls.__doc__ or "").split()), ""]
        for part in ("spec", "status"):
            out += [f"### {part}", "", "| field | type | description |", "|---|---|---|"]
            rows = _reference_rows(schema["properties"][part], "")
            out += [f"| {f} | {t} | {d} |" for f, t, d in rows]
            out.append("")
    return "\n".join(out)


def render(classes: list[type[Resource]]) -> dict[str, str]:
    """Every generated file's text, by its name."""
    return {crd_filename(cls): _dump(crd(cls)) for cls in classes}


def main(argv: list[str] | None = None) -> int:
    """Write (or, with ``--check``, compare) the generated CRDs and API reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory of the CRD YAML")
    parser.add_argument("--chart", type=Path, help="the Helm chart's crds/ directory")
    parser.add_argument(
        "--docs", type=Path, help="the Markdown API reference (the scorecard schema goes beside it)"
    )
    parser.add_argument("--check", action="store_true", help="fail if files differ")
    args = parser.parse_args(argv)
    classes = list(KINDS.values())
    files: dict[Path, str] = {}
    for directory in filter(None, (args.out, args.chart)):
        files.update({directory / name: text for name, text in render(classes).items()})
    if args.docs:
        files[args.docs] = reference(classes)
        schema = json.dumps(scorecard_json_schema(), indent=2, sort_keys=True) + "\n"
        files[args.docs.parent / "scorecard.schema.json"] = schema
    stale = []
    for path, text in files.items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(path)
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(path), "generated"
            )
            sys.stderr.write("\n".join(list(diff)[:40]) + "\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        names = ", ".join(map(str, stale))
        sys.stderr.write(f"generated files are stale: {names}; run `make crds`\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
