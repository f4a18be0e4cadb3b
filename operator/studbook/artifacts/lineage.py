"""The lineage DAG of descendants: queries and exports (JSON, Graphviz DOT, Mermaid).

Edges go from parent to child. Ids make cycles impossible in practice (a child's id binds its
``lineage.json``, which names its parents), but the traversals do not rely on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studbook.artifacts.errors import GraphvizNotInstalledError, LineageError
from studbook.artifacts.package import Lineage
from studbook.artifacts.store import Store


def short(artifact: str) -> str:
    """A short label for an id: ``sha256:`` and the first 12 hex digits."""
    return artifact[:19]


@dataclass(frozen=True)
class Node:
    """One artifact in the graph; ``lineage`` is ``None`` for a parent not in the store."""

    id: str
    lineage: Lineage | None


class LineageGraph:
    """A DAG of artifacts built from their lineage records."""

    def __init__(self, lineages: Mapping[str, Lineage]) -> None:
        self._nodes: dict[str, Node] = {a: Node(a, lin) for a, lin in lineages.items()}
        self._children: dict[str, set[str]] = {a: set() for a in lineages}
        for artifact, lin in lineages.items():
            for parent in lin.parents:
                if parent not in self._nodes:
                    self._nodes[parent] = Node(parent, None)
                    self._children[parent] = set()
                self._children[parent].add(artifact)

    @classmethod
    def from_store(cls, store: Store) -> LineageGraph:
        """The graph of every package in a store (lineage records are read verified)."""
        return cls({a: store.lineage(a) for a in store.ids()})

    def __contains__(self, artifact: object) -> bool:
        return artifact in self._nodes

    @property
    def ids(self) -> list[str]:
        """Every node, sorted."""
        return sorted(self._nodes)

    def node(self, artifact: str) -> Node:
        """One node; :class:`LineageError` if unknown."""
        try:
            return self._nodes[artifact]
        except KeyError:
            raise LineageError(f"{artifact} is not in the lineage graph") from None

    def parents(self, artifact: str) -> list[str]:
        """Direct parents."""
        lin = self.node(artifact).lineage
        return list(lin.parents) if lin else []

    def children(self, artifact: str) -> list[str]:
        """Direct children, sorted."""
        self.node(artifact)
        return sorted(self._children[artifact])

    def _walk(self, start: str, step: Any) -> list[str]:
        seen: set[str] = set()
        order: list[str] = []
        queue = deque(step(start))
        while queue:
            current = queue.popleft()
            if current in seen:
                continue
            seen.add(current)
            order.append(current)
            queue.extend(step(current))
        return order

    def ancestors(self, artifact: str) -> list[str]:
        """Every ancestor, nearest first (breadth first)."""
        return self._walk(artifact, self.parents)

    def descendants(self, artifact: str) -> list[str]:
        """Every descendant, nearest first (breadth first)."""
        return self._walk(artifact, self.children)

    def roots(self) -> list[str]:
        """Nodes without parents: founders, and parents missing from the store."""
        return sorted(a for a in self._nodes if not self.parents(a))

    def missing(self) -> list[str]:
        """Parents named by some lineage record but absent from the store."""
        return sorted(a for a, n in self._nodes.items() if n.lineage is None)

    def path(self, source: str, target: str) -> list[str]:
        """The shortest chain of parent-to-child edges between two artifacts.

        Either may be the ancestor; the chain is returned from ``source`` to ``target``.
        """
        self.node(source)
        self.node(target)
        for a, b, step, flip in (
            (source, target, self.children, False),
            (target, source, self.children, True),
        ):
            previous: dict[str, str | None] = {a: None}
            queue = deque([a])
            while queue:
                current = queue.popleft()
                if current == b:
                    chain = [current]
                    while (p := previous[chain[-1]]) is not None:
                        chain.append(p)
                    chain.reverse()
                    return chain[::-1] if flip else chain
                for nxt in step(current):
                    if nxt not in previous:
                        previous[nxt] = current
                        queue.append(nxt)
        raise LineageError(f"{source} and {target} are not on one line of descent")

    def subgraph(self, artifacts: Iterable[str]) -> LineageGraph:
        """The graph restricted to some nodes (e.g. one artifact and its ancestors)."""
        keep = set(artifacts)
        return LineageGraph(
            {
                a: n.lineage.model_copy(
                    update={"parents": tuple(p for p in n.lineage.parents if p in keep)}
                )
                for a, n in self._nodes.items()
                if a in keep and n.lineage is not None
            }
        )

    def family(self, artifact: str) -> LineageGraph:
        """One artifact with all its ancestors and descendants."""
        return self.subgraph([artifact, *self.ancestors(artifact), *self.descendants(artifact)])

    def edges(self) -> list[tuple[str, str]]:
        """Every ``(parent, child)`` edge, sorted."""
        return sorted((p, c) for p, cs in self._children.items() for c in cs)

    # -- exports --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Nodes (with their lineage records) and edges as plain JSON."""
        nodes = []
        for artifact in self.ids:
            lin = self._nodes[artifact].lineage
            nodes.append(
                {
                    "id": artifact,
                    "missing": lin is None,
                    "lineage": None if lin is None else json.loads(lin.to_bytes()),
                }
            )
        edges = [{"parent": p, "child": c} for p, c in self.edges()]
        return {"nodes": nodes, "edges": edges}

    def _label(self, artifact: str) -> str:
        lin = self._nodes[artifact].lineage
        return f"{short(artifact)}\\n{lin.operator if lin else 'missing'}"

    def to_dot(self) -> str:
        """Graphviz DOT source, parents above children."""
        lines = ["digraph lineage {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
        for artifact in self.ids:
            style = ", style=dashed" if self._nodes[artifact].lineage is None else ""
            lines.append(f'  "{artifact}" [label="{self._label(artifact)}"{style}];')
        for parent, child in self.edges():
            lines.append(f'  "{parent}" -> "{child}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """Mermaid flowchart source."""
        key = {a: f"n{i}" for i, a in enumerate(self.ids)}
        lines = ["flowchart TD"]
        for artifact in self.ids:
            label = self._label(artifact).replace("\\n", "<br/>")
            lines.append(f'  {key[artifact]}["{label}"]')
        for parent, child in self.edges():
            lines.append(f"  {key[parent]} --> {key[child]}")
        return "\n".join(lines) + "\n"

    def render(self, out: Path, fmt: str | None = None) -> Path:
        """Render a picture with Graphviz's ``dot`` (format from the suffix by default)."""
        dot = shutil.which("dot")
        if dot is None:
            raise GraphvizNotInstalledError(
                "rendering needs Graphviz's dot on the PATH; export DOT or Mermaid instead"
            )
        kind = fmt or out.suffix.lstrip(".") or "svg"
        subprocess.run([dot, f"-T{kind}", "-o", str(out)], input=self.to_dot().encode(), check=True)
        return out
