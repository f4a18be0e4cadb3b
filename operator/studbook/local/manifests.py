"""Reading a directory of manifests the way ``studbook breed`` needs them.

All valid, references resolved, descendants ordered parents first, and every problem named by
file and field before any training starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.composer import ComposerError
from yaml.nodes import Node, ScalarNode

from studbook.api import (
    BreedingPolicy,
    BreedingRun,
    Descendant,
    EvaluationSuite,
    ManifestError,
    Problem,
    Promotion,
    Resource,
    parse_manifest,
)
from studbook.api.common import ParentRef

MAX_BYTES = 1 << 20
"""The largest manifest file read; a breeding manifest is a few KiB."""
MAX_WEIGHT = 1_000_000
"""The most one file may expand to: nodes plus scalar characters, an alias counted at each use."""
MAX_DEPTH = 64
"""The deepest nesting of collections in a manifest."""


@dataclass
class Manifests:
    """The resources of one breeding directory, by name, with where each came from."""

    policies: dict[str, BreedingPolicy] = field(default_factory=dict)
    suites: dict[str, EvaluationSuite] = field(default_factory=dict)
    descendants: dict[str, Descendant] = field(default_factory=dict)
    runs: dict[str, BreedingRun] = field(default_factory=dict)
    """BreedingRuns, searched once the descendants are bred."""
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


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses a document expanding past :data:`MAX_WEIGHT`.

    PyYAML builds an alias as a shared reference, so a billion laughs loads small and explodes
    only when walked (validation serialises it): its expanded size is counted while composing,
    each node's once, so the refusal comes after a few hundred nodes, not a billion.
    """

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name  # marks in errors then name the file, not "<unicode string>"
        self.weight = 0
        self.depth = 0
        self.weights: dict[Node, int] = {}

    def _grow(self, amount: int, where: Node) -> None:
        self.weight += amount
        if self.weight > MAX_WEIGHT:
            raise ComposerError(
                None, None, f"expands past {MAX_WEIGHT} nodes and characters", where.start_mark
            )

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        """Compose one node, counting what it expands to; refuse too much, too deep, or a loop."""
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)  # an undefined alias is refused there
            assert node is not None
            if node not in self.weights:
                raise ComposerError(
                    None, None, "an alias inside the node it refers to", node.start_mark
                )
            self._grow(self.weights[node], parent or node)
            return node
        self.depth += 1
        if self.depth > MAX_DEPTH and parent is not None:
            raise ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", parent.start_mark
            )
        before = self.weight
        node = super().compose_node(parent, index)
        assert node is not None
        self._grow(1 + (len(node.value) if isinstance(node, ScalarNode) else 0), node)
        self.weights[node] = self.weight - before
        self.depth -= 1
        return node


def _refused(path: Path, message: str) -> ManifestsError:
    return ManifestsError([(str(path), Problem("", message))])


def read_yaml(path: Path) -> list[object]:
    """The documents of one YAML file, refused whole if it is unreadable, too large or too deep.

    Safe tags only, at most :data:`MAX_BYTES`, expanding to at most :data:`MAX_WEIGHT`.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise _refused(path, f"cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_BYTES:
        raise _refused(path, f"larger than {MAX_BYTES // 1024} KiB; a manifest is a few KiB")
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise _refused(path, f"not UTF-8 text: {error}") from None
    try:
        loader = _BoundedLoader(text, str(path))  # refuses unprintable characters already
        documents = []
        while loader.check_node():
            documents.append(loader.get_data())
    except yaml.YAMLError as error:
        raise _refused(path, f"not valid YAML: {error}") from None
    return documents


def _documents(path: Path) -> list[tuple[str, object]]:
    """The documents of one file, each with where it was read (``file#index`` when several)."""
    documents = read_yaml(path)
    found = []
    for index, document in enumerate(d for d in documents if d is not None):
        _resolve_paths(document, path.parent)
        found.append(((str(path) if len(documents) == 1 else f"{path}#{index}"), document))
    return found


def load(paths: Iterable[Path]) -> Manifests:
    """Parse and cross-check manifests; raise :class:`ManifestsError` listing every problem."""
    found = Manifests()
    problems: list[tuple[str, Problem]] = []
    broken: set[str] = set()
    documents: list[tuple[str, object]] = []
    for path in paths:
        try:
            documents += _documents(path)
        except ManifestsError as error:
            problems += error.problems
    for where, document in documents:
        if not isinstance(document, dict):
            problems.append((where, Problem("", "a manifest must be a mapping")))
            continue
        metadata = document.get("metadata")
        try:
            resource = parse_manifest(document, where)
        except ManifestError as error:
            problems += [(where, p) for p in error.problems]
            # Its name still counts, so children are not also reported as orphans.
            broken.add(str(metadata.get("name") if isinstance(metadata, dict) else None))
            continue
        except (TypeError, ValueError) as error:  # keys JSON cannot hold, such as a list
            problems.append((where, Problem("", f"not a manifest: {error}")))
            continue
        if isinstance(resource, Promotion):
            problems.append(
                (
                    where,
                    Problem(
                        "kind",
                        "Promotion is not run by `studbook breed`: a release needs a cluster;"
                        " leave it out of the directory",
                    ),
                )
            )
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
        elif isinstance(resource, BreedingRun):
            found.runs[resource.metadata.name] = resource
    for name, descendant in found.descendants.items():
        where = found.sources[("Descendant", name)]
        spec = descendant.spec
        problems += _governance(found, where, spec.policy_ref.name, spec.evaluation_suite_ref.name)
        problems += _parents(found, broken, where, "spec.parents", spec.parents)
    for name, run in found.runs.items():
        where = found.sources[("BreedingRun", name)]
        search = run.spec
        problems += _governance(
            found, where, search.policy_ref.name, search.evaluation_suite_ref.name
        )
        problems += _parents(found, broken, where, "spec.parentPool", search.parent_pool)
    if problems:
        raise ManifestsError(problems)
    order(found)
    return found


def _governance(found: Manifests, where: str, policy: str, suite: str) -> list[tuple[str, Problem]]:
    """Problems of a policy and suite reference that name no resource of the directory."""
    problems = []
    if policy not in found.policies:
        problems.append((where, Problem("spec.policyRef.name", f"no BreedingPolicy {policy!r}")))
    if suite not in found.suites:
        problems.append(
            (where, Problem("spec.evaluationSuiteRef.name", f"no EvaluationSuite {suite!r}"))
        )
    return problems


def _parents(
    found: Manifests, broken: set[str], where: str, at: str, parents: Iterable[ParentRef]
) -> list[tuple[str, Problem]]:
    """Problems of parent references that name no Descendant of the directory."""
    return [
        (where, Problem(f"{at}[{i}].name", f"no Descendant {parent.name!r}"))
        for i, parent in enumerate(parents)
        if parent.name not in found.descendants and parent.name not in broken
    ]


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
