"""Reading a directory of manifests the way ``studbook breed`` needs them.

All valid, references resolved, descendants ordered parents first, and every problem named by
file and field before any training starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studbook.api import (
    BreedingPolicy,
    Descendant,
    EvaluationSuite,
    ManifestError,
    Problem,
    Resource,
    parse_manifest,
)


@dataclass
class Manifests:
    """The resources of one breeding directory, by name, with where each came from."""

    policies: dict[str, BreedingPolicy] = field(default_factory=dict)
    suites: dict[str, EvaluationSuite] = field(default_factory=dict)
    descendants: dict[str, Descendant] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    """``file#index`` of each resource, by (kind, name)."""

    def source(self, resource: Resource) -> str:
        """Where a resource was read from."""
        return self.sources[(resource.kind_name(), resource.metadata.name)]


class ManifestsError(ValueError):
    """Problems found in a breeding directory, each naming its file and field."""

    def __init__(self, problems: list[tuple[str, Problem]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {where}: {problem}" for where, problem in problems)
        super().__init__(f"{len(problems)} problem(s) in the manifests:\n{lines}")


def _local(uri: object, base: Path) -> object:
    """A scheme-less relative path, made absolute against the manifest's directory."""
    if isinstance(uri, str) and uri and "://" not in uri and not Path(uri).is_absolute():
        return str((base / uri).resolve())
    return uri


def _resolve_paths(document: object, base: Path) -> None:
    """Make relative data and import paths count from the manifest's own directory.

    As in kustomize: a breeding directory then runs from anywhere.
    """
    spec = document.get("spec") if isinstance(document, dict) else None
    if not isinstance(spec, dict):
        return
    refs = [spec.get("datasets"), spec.get("data")]
    for listed in refs:
        for ref in listed if isinstance(listed, list) else []:
            if isinstance(ref, dict) and "uri" in ref:
                ref["uri"] = _local(ref["uri"], base)
    operator = spec.get("operator")
    source = operator.get("import") if isinstance(operator, dict) else None
    if isinstance(source, dict) and "uri" in source:
        source["uri"] = _local(source["uri"], base)


def _documents(paths: Iterable[Path]) -> Iterable[tuple[str, object]]:
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            raise ManifestsError([(str(path), Problem("", f"not valid YAML: {error}"))]) from None
        for index, document in enumerate(d for d in documents if d is not None):
            _resolve_paths(document, path.parent)
            yield (str(path) if len(documents) == 1 else f"{path}#{index}"), document


def load(paths: Iterable[Path]) -> Manifests:
    """Parse and cross-check manifests; raise :class:`ManifestsError` listing every problem."""
    found = Manifests()
    problems: list[tuple[str, Problem]] = []
    broken: set[str] = set()
    for where, document in _documents(paths):
        raw = document if isinstance(document, dict) else {}
        try:
            resource = parse_manifest(raw, where)
        except ManifestError as error:
            problems += [(where, p) for p in error.problems]
            # Its name still counts, so children are not also reported as orphans.
            broken.add(str((raw.get("metadata") or {}).get("name")))
            continue
        key = (resource.kind_name(), resource.metadata.name)
        if key in found.sources:
            problems.append(
                (
                    where,
                    Problem("metadata.name", f"{key[0]} {key[1]!r} also in {found.sources[key]}"),
                )
            )
            continue
        found.sources[key] = where
        if isinstance(resource, BreedingPolicy):
            found.policies[resource.metadata.name] = resource
        elif isinstance(resource, EvaluationSuite):
            found.suites[resource.metadata.name] = resource
        elif isinstance(resource, Descendant):
            found.descendants[resource.metadata.name] = resource
    for name, descendant in found.descendants.items():
        where = found.sources[("Descendant", name)]
        spec = descendant.spec
        if spec.policy_ref.name not in found.policies:
            problems.append(
                (
                    where,
                    Problem("spec.policyRef.name", f"no BreedingPolicy {spec.policy_ref.name!r}"),
                )
            )
        if spec.evaluation_suite_ref.name not in found.suites:
            problems.append(
                (
                    where,
                    Problem(
                        "spec.evaluationSuiteRef.name",
                        f"no EvaluationSuite {spec.evaluation_suite_ref.name!r}",
                    ),
                )
            )
        for i, parent in enumerate(spec.parents):
            if parent.name not in found.descendants and parent.name not in broken:
                problems.append(
                    (where, Problem(f"spec.parents[{i}].name", f"no Descendant {parent.name!r}"))
                )
    if problems:
        raise ManifestsError(problems)
    order(found)
    return found


def order(manifests: Manifests) -> list[Descendant]:
    """Descendants with every parent before its children; a cycle is refused by name."""
    done: list[Descendant] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join((*path[path.index(name) :], name))
            where = manifests.sources[("Descendant", name)]
            raise ManifestsError([(where, Problem("spec.parents", f"parentage cycle: {cycle}"))])
        state[name] = "visiting"
        for parent in manifests.descendants[name].spec.parents:
            visit(parent.name, (*path, name))
        state[name] = "done"
        done.append(manifests.descendants[name])

    for name in sorted(manifests.descendants):
        visit(name, ())
    return done


def manifest_files(directory: Path) -> list[Path]:
    """The YAML files of a breeding directory, in a stable order."""
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
