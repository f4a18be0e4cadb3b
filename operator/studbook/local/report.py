"""``studbook report``: a breeding workspace as one self-contained page and as Markdown.

:func:`load` reads the model of the report from a workspace: each descendant's status from the
registry and its full scorecard from the store, where the sign step put it, and each
BreedingRun's status and ledger. Everything after that is a pure function of the model:
:func:`headline`, :func:`layered_layout`, :func:`lineage_svg`, :func:`bar_chart`,
:func:`pareto_svg`, :func:`gaps`, :func:`recipe_yaml`, :func:`to_html` and :func:`to_markdown`;
:func:`write` puts the files down.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from studbook.api.descendant import Descendant, DescendantStatus, ScorecardSummary
from studbook.api.ledger import Ledger, TrialRecord
from studbook.api.run import BreedingRunStatus
from studbook.api.scorecard import MetricResult, Profile, Scorecard
from studbook.artifacts import Store
from studbook.artifacts.lineage import short
from studbook.local.workspace import Workspace

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
LINEAGE_FILE = "lineage.svg"


class ReportError(Exception):
    """A workspace the report cannot be made of; :attr:`reason` names why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """A CamelCase constant: ``WorkspaceNotFound``, ``RegistryEmpty``, ``RegistryMalformed``
        or ``ScorecardMissing``."""


# -- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One descendant of the workspace: its status, its parents and its scorecard."""

    name: str
    """The descendant's name."""
    status: DescendantStatus
    """Its status, as the registry holds it."""
    parents: tuple[str, ...]
    """Its parents' names, in lineage order; a parent bred outside the workspace by short id."""
    scorecard: Scorecard | None
    """Its full scorecard, once evaluated."""

    @property
    def operator(self) -> str | None:
        """The operator kind that bred it, from its lineage (none before breeding)."""
        return self.status.lineage.operator if self.status.lineage else None

    @property
    def verdict(self) -> str | None:
        """The suite's verdict, once evaluated."""
        return self.status.scorecard.verdict if self.status.scorecard else None

    @property
    def objective(self) -> float | None:
        """The objective the scorecard gives it."""
        card = self.scorecard
        return card.objective.value if card and card.objective else None


@dataclass(frozen=True)
class RunEntry:
    """One BreedingRun of the workspace: its status, its ledger and its best recipe."""

    name: str
    """The run's name."""
    status: BreedingRunStatus
    """Its status, as ``studbook breed`` recorded it."""
    ledger: Ledger | None
    """Its ledger, where the store still has it."""
    best: Descendant | None
    """The Descendant of its best trial, as it was bred."""

    def trial(self, number: int) -> TrialRecord | None:
        """A trial of the ledger."""
        trials = self.ledger.trials if self.ledger else []
        return trials[number] if 0 <= number < len(trials) else None


@dataclass(frozen=True)
class Report:
    """Everything the report shows, in lineage order (parents before children)."""

    workspace: Path
    """The workspace it was read from."""
    entries: tuple[Entry, ...]
    """Every descendant of the registry."""
    runs: tuple[RunEntry, ...] = ()
    """Every BreedingRun the workspace recorded, by name."""

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        """Every node of the lineage graph and its parents, parents from outside included."""
        graph = {e.name: e.parents for e in self.entries}
        for entry in self.entries:
            for parent in entry.parents:
                graph.setdefault(parent, ())
        return graph

    @property
    def scored(self) -> list[Entry]:
        """The descendants that have a scorecard."""
        return [e for e in self.entries if e.scorecard is not None]

    def entry(self, name: str) -> Entry | None:
        """The descendant of that name, if it is in the workspace."""
        return next((e for e in self.entries if e.name == name), None)


def load(workspace: Path) -> Report:
    """Read the report's model from a workspace made by ``studbook breed``."""
    space = Workspace(workspace)
    if not space.registry_path.is_file():
        raise ReportError(
            "WorkspaceNotFound",
            f"{workspace} is not a breeding workspace: it has no {space.registry_path.name}"
            " (make one with `studbook breed DIR --workspace WS`)",
        )
    try:
        registry = space.registry()
        statuses = {
            name: DescendantStatus.model_validate_json(json.dumps(entry["status"]))
            for name, entry in registry.items()
        }
    except (ValueError, KeyError, TypeError) as error:  # pydantic's errors are ValueErrors
        raise ReportError(
            "RegistryMalformed", f"{space.registry_path} cannot be read: {error}"
        ) from None
    if not statuses:
        raise ReportError("RegistryEmpty", f"{space.registry_path} records no descendant yet")
    store = Store.open(space.store)
    by_id: dict[str, str] = {}
    for name, status in sorted(statuses.items()):
        if status.artifact is not None:
            by_id.setdefault(status.artifact.id, name)
    entries = {
        name: Entry(
            name=name,
            status=status,
            parents=tuple(
                by_id.get(p, short(p))
                for p in (status.lineage.parent_ids if status.lineage else [])
            ),
            scorecard=_scorecard(store, name, status),
        )
        for name, status in statuses.items()
    }
    depth = layers({name: e.parents for name, e in entries.items()})
    # Descendants never bred (refused, or failed before sealing) come last.
    ordered = sorted(
        entries.values(), key=lambda e: (e.status.lineage is None, depth[e.name], e.name)
    )
    return Report(workspace=workspace, entries=tuple(ordered), runs=_runs(space))


def _runs(space: Workspace) -> tuple[RunEntry, ...]:
    try:
        recorded = space.runs()
        runs = []
        for name, record in sorted(recorded.items()):
            status = BreedingRunStatus.model_validate_json(json.dumps(record["status"]))
            ledger = None
            if status.ledger_uri and Path(status.ledger_uri).is_file():
                ledger = Ledger.model_validate_json(Path(status.ledger_uri).read_bytes())
            best = record.get("best")
            recipe = Descendant.model_validate_json(json.dumps(best)) if best else None
            runs.append(RunEntry(name, status, ledger, recipe))
    except (ValueError, KeyError, TypeError) as error:
        raise ReportError(
            "RegistryMalformed", f"{space.runs_path} cannot be read: {error}"
        ) from None
    return tuple(runs)


def _scorecard(store: Store, name: str, status: DescendantStatus) -> Scorecard | None:
    summary, artifact = status.scorecard, status.artifact
    if summary is None or artifact is None:
        return None
    if store.exists(artifact.id):
        for blob, _bundle in store.scorecards(artifact.id):
            card = Scorecard.model_validate_json(blob.data)
            if card.suite.digest == summary.suite_digest and _agrees(card, summary):
                return card
    # The sign step stores the scorecard beside the artifact: a descendant that failed before it
    # has none to show, but a Ready one must.
    if status.phase != "Ready":
        return None
    raise ReportError(
        "ScorecardMissing",
        f"{name}: no scorecard of suite {summary.suite} {summary.suite_version} is stored beside"
        f" {artifact.short_id} in {store.uri}",
    )


def _agrees(card: Scorecard, summary: ScorecardSummary) -> bool:
    # Evaluations of one artifact on one suite differ only in measured latency; the summary's
    # metrics tell which of them this descendant's status was made from.
    for key, value in summary.metrics.items():
        result = card.metric(key)
        if result is None or not math.isclose(result.value, value, rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


def objective_of(card: Scorecard, values: Mapping[str, float]) -> float | None:
    """The objective of any model evaluated in ``card``'s run, from its metrics by key.

    The mean over the objective's metrics, minimized ones negated, as the evaluation harness
    computes the subject's :attr:`Scorecard.objective`; the harness belongs to the trainer, which
    the operator package never imports, so the comparisons' objectives are computed here from the
    keys and directions the scorecard records. ``None`` where a metric is missing.
    """
    if card.objective is None:
        return None
    signed = []
    for key in card.objective.metrics:
        result = card.metric(key)
        if result is None or key not in values:
            return None
        signed.append(values[key] if result.direction == "maximize" else -values[key])
    return sum(signed) / len(signed)


# -- the headline -----------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:.3f}"


def _and(items: Sequence[str], word: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def headline(report: Report) -> list[str]:
    """The report's conclusions, one sentence each.

    Which descendant scores best on each suite's objective, and for every merge whether it beats
    each of its parents on it (stated either way, with the numbers).
    """
    lines: list[str] = []
    suites: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in report.scored:
        assert entry.scorecard is not None
        if entry.objective is not None:
            suite = entry.scorecard.suite
            suites.setdefault((suite.name, suite.version, suite.digest), []).append(entry)
    if not suites:
        lines.append("No descendant has an objective score yet.")
    for (suite_name, version, _digest), entries in suites.items():
        ranked = sorted(entries, key=lambda e: (-(e.objective or 0.0), e.name))
        top = ranked[0].objective
        assert top is not None and ranked[0].scorecard is not None
        assert ranked[0].scorecard.objective is not None
        keys = _and(ranked[0].scorecard.objective.metrics)
        best = [e.name for e in ranked if e.objective == top]
        where = f"the objective of suite {suite_name} {version} (mean of {keys})"
        if len(best) > 1:
            sentence = f"{_and(best)} tie for the best score on {where}: {_num(top)}"
        else:
            sentence = f"{best[0]} scores best on {where}: {_num(top)}"
        # A best score is no release decision: say so when the verdict or the policy disagree.
        caveats = [(e.name, _caveat(e)) for e in ranked if e.name in best and _caveat(e)]
        if caveats:
            said = [text if len(best) == 1 else f"{name}: {text}" for name, text in caveats]
            sentence += f" ({'; '.join(said)})"
        rest = [e for e in ranked if e.name not in best]
        if rest:
            sentence += "; then " + ", ".join(
                f"{e.name} {_num(e.objective)}" for e in rest if e.objective is not None
            )
        lines.append(sentence + ".")
    lines.extend(_merge_line(e) for e in report.entries if e.operator == "merge")
    unscored = [e for e in report.entries if e.scorecard is None]
    if unscored:
        names = _and([f"{e.name} ({e.status.phase})" for e in unscored])
        lines.append(f"Without a scorecard: {names}.")
    return lines


def _caveat(entry: Entry) -> str:
    said = [f"verdict {entry.verdict}"] if entry.verdict != "pass" else []
    if entry.status.stage == "archived":
        said.append("archived as a negative result")
    return ", ".join(said)


def _merge_line(entry: Entry) -> str:
    card, value = entry.scorecard, entry.objective
    if card is None or value is None:
        return f"{entry.name} has no objective score to compare with its parents."
    parents = [
        (c.name, objective_of(card, c.metrics)) for c in card.comparisons if c.role == "parent"
    ]
    scored = [(name, v) for name, v in parents if v is not None]
    unknown = [name for name, v in parents if v is None]
    tail = f"; {_and(unknown)} cannot be compared (no objective score)" if unknown else ""
    if not scored:
        return f"{entry.name} cannot be compared with its parents on the objective{tail}."
    beaten = [(name, v) for name, v in scored if value > v]
    missed = [(name, v) for name, v in scored if value <= v]
    if not missed:
        who = {1: "its parent", 2: "both its parents"}.get(
            len(scored), f"all {len(scored)} of its parents"
        )
        names = _and([name for name, _ in scored])
        scores = ", ".join(_num(v) for _, v in scored)
        return (
            f"{entry.name} beats {who} {names} on the objective ({_num(value)} vs {scores}){tail}."
        )
    versus = [f"{name} ({_num(value)} vs {_num(v)})" for name, v in missed]
    sentence = f"{entry.name} does not beat {_and(versus, 'or')} on the objective"
    if beaten:
        sentence += "; it beats " + _and([f"{n} ({_num(value)} vs {_num(v)})" for n, v in beaten])
    return sentence + tail + "."


# -- layout and pictures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """Where one node of a layered drawing lies."""

    x: float
    """Left edge."""
    y: float
    """Top edge."""
    width: float
    """Width."""
    height: float
    """Height."""
    layer: int
    """Its layer: 0 for nodes without parents, else one below its deepest parent."""

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share any area."""
        return (
            self.x < other.x + other.width
            and other.x < self.x + self.width
            and self.y < other.y + other.height
            and other.y < self.y + self.height
        )


@dataclass(frozen=True)
class Layout:
    """A layered drawing: a box per node and the size of the picture."""

    boxes: dict[str, Box]
    """The boxes by node."""
    width: float
    """The picture's width."""
    height: float
    """The picture's height."""


def layers(parents: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """The layer of every node: 0 without parents, else one below its deepest parent.

    A parent that is not a key is a node without parents; a cycle raises :class:`ValueError`.
    """
    nodes = set(parents) | {p for ps in parents.values() for p in ps}
    waiting = {n: set(parents.get(n, ())) for n in nodes}
    layer: dict[str, int] = {}
    ready = sorted(n for n, ps in waiting.items() if not ps)
    while ready:
        node = ready.pop()
        layer[node] = max((layer[p] + 1 for p in parents.get(node, ())), default=0)
        for child, ps in waiting.items():
            if node in ps:
                ps.discard(node)
                if not ps:
                    ready.append(child)
    if len(layer) != len(nodes):
        raise ValueError(f"the parentage has a cycle through {sorted(set(nodes) - set(layer))}")
    return layer


def layered_layout(
    parents: Mapping[str, Sequence[str]],
    widths: Mapping[str, float],
    *,
    height: float = 46.0,
    gap: float = 28.0,
    layer_gap: float = 56.0,
    margin: float = 12.0,
) -> Layout:
    """Place each node in its layer (founders at the top) with no two boxes overlapping.

    Founders with children come first, then those without. Below, a layer is ordered by the mean
    position of each node's parents, and each node lies as close under its parents as the
    nodes beside it allow: the squared distances are minimised by pooling adjacent violators,
    so siblings spread evenly under a shared parent.
    """
    layer = layers(parents)
    rows: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for node in sorted(layer):
        rows[layer[node]].append(node)
    has_children = {p for ps in parents.values() for p in ps}
    centre: dict[str, float] = {}
    for depth, row in enumerate(rows):

        def wanted(node: str) -> float:
            ps = parents.get(node, ())
            return sum(centre[p] for p in ps) / len(ps)

        if depth == 0:
            row.sort(key=lambda n: (n not in has_children, n))
        else:
            row.sort(key=lambda n: (wanted(n), n))
        # Offsets of the centres when the row is packed tight, from the first node's centre.
        packed = [0.0]
        for left, right in itertools.pairwise(row):
            packed.append(packed[-1] + widths[left] / 2 + gap + widths[right] / 2)
        targets = packed if depth == 0 else [wanted(n) for n in row]
        # Blocks of nodes packed tight: (how many, sum of their targets less their offsets).
        blocks: list[tuple[int, float]] = []
        for target, offset in zip(targets, packed, strict=True):
            count, total = 1, target - offset
            while blocks and total / count < blocks[-1][1] / blocks[-1][0]:
                merged, more = blocks.pop()
                count, total = count + merged, total + more
            blocks.append((count, total))
        index = 0
        for count, total in blocks:
            for _ in range(count):
                centre[row[index]] = total / count + packed[index]
                index += 1
    shift = margin - min((centre[n] - widths[n] / 2 for n in centre), default=margin)
    boxes = {
        node: Box(
            centre[node] + shift - widths[node] / 2,
            margin + layer[node] * (height + layer_gap),
            widths[node],
            height,
            layer[node],
        )
        for node in centre
    }
    width = max((b.x + b.width for b in boxes.values()), default=0.0) + margin
    total_height = 2 * margin + len(rows) * height + max(len(rows) - 1, 0) * layer_gap
    return Layout(boxes, width, total_height)


_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"
_COLOURS = {
    "pass": ("#e3f4e6", "#2e7d32"),
    "fail": ("#fde7e7", "#c62828"),
    "archived": ("#fff3e0", "#e65100"),
    None: ("#eeeeee", "#757575"),
}


def _colour_key(entry: Entry | None) -> str | None:
    """The suite's verdict, unless the policy's gates archived the descendant anyway."""
    if entry is not None and entry.status.stage == "archived":
        return "archived"
    return entry.verdict if entry else None


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _subtitle(entry: Entry | None) -> str:
    if entry is None:
        return "not in this workspace"
    parts = [entry.operator or "", entry.verdict or entry.status.phase]
    if entry.status.stage == "archived":
        parts.append("archived")
    return " · ".join(p for p in parts if p)


def lineage_svg(report: Report) -> str:
    """The lineage DAG as a standalone SVG: a box per descendant, an arrow per parent link.

    A box shows the name, the operator kind and the verdict, and is coloured by the verdict: green
    for ``pass``, red for ``fail``, grey for none (not evaluated, or inconclusive), and orange
    when the policy's gates archived it as a negative result.
    """
    graph = report.graph
    # Width from the text: about 8 px a character of the 13 px bold name, 6.5 of the 11 px line.
    widths = {
        node: 24.0 + max(100.0, 8.0 * len(node), 6.5 * len(_subtitle(report.entry(node))))
        for node in graph
    }
    layout = layered_layout(graph, widths)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{layout.width:.0f}"'
        f' height="{layout.height:.0f}" viewBox="0 0 {layout.width:.0f} {layout.height:.0f}"'
        ' role="img" aria-label="lineage graph">',
        "<title>Lineage: parents above their children</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"'
        ' markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"'
        ' fill="#555"/></marker></defs>',
    ]
    for child in sorted(graph):
        for parent in graph[child]:
            a, b = layout.boxes[parent], layout.boxes[child]
            x1, y1 = a.x + a.width / 2, a.y + a.height
            x2, y2 = b.x + b.width / 2, b.y
            mid = (y1 + y2) / 2
            out.append(
                f'<path class="edge" data-parent="{_esc(parent)}" data-child="{_esc(child)}"'
                f' d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"'
                ' fill="none" stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
    for node, box in sorted(layout.boxes.items()):
        entry = report.entry(node)
        fill, stroke = _COLOURS.get(_colour_key(entry), _COLOURS[None])
        cx = box.x + box.width / 2
        out.append(
            f'<g class="node" data-name="{_esc(node)}"><title>{_esc(node)}</title>'
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}"'
            f' height="{box.height:.1f}" rx="6" fill="{fill}" stroke="{stroke}"'
            ' stroke-width="1.5"/>'
            f'<text x="{cx:.1f}" y="{box.y + 19:.1f}" text-anchor="middle" font-size="13"'
            f' font-weight="bold" style="{_FONT}">{_esc(node)}</text>'
            f'<text x="{cx:.1f}" y="{box.y + 36:.1f}" text-anchor="middle" font-size="11"'
            f' fill="#333" style="{_FONT}">{_esc(_subtitle(entry))}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bar_chart(
    bars: Sequence[tuple[str, float]],
    label: Callable[[float], str],
    title: str,
    highlight: Iterable[str] = (),
) -> str:
    """A horizontal bar chart as an SVG element, one bar per ``(name, value)``.

    Bars start at zero (negative values go left of it); ``highlight`` names bars drawn darker,
    ``label`` writes the value beside each bar.
    """
    marked = set(highlight)
    row, bar_area = 22.0, 260.0
    name_w = 12.0 + 7.0 * max((len(n) for n, _ in bars), default=0)
    value_w = 12.0 + 7.0 * max((len(label(v)) for _, v in bars), default=0)
    lo = min([0.0, *(v for _, v in bars)])
    hi = max([0.0, *(v for _, v in bars)])
    scale = bar_area / (hi - lo) if hi > lo else 0.0
    zero = name_w + (0.0 - lo) * scale
    width, height = name_w + bar_area + value_w, row * len(bars) + 8
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0f}"'
        f' height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
        f' aria-label="{_esc(title)}"><title>{_esc(title)}</title>'
    ]
    for i, (name, value) in enumerate(bars):
        y = 4 + i * row
        x = min(zero, zero + value * scale)
        colour = "#1f5f99" if name in marked else "#8fb3d9"
        out.append(
            f'<text x="{name_w - 6:.1f}" y="{y + 15:.1f}" text-anchor="end" font-size="12"'
            f' style="{_FONT}">{_esc(name)}</text>'
            f'<rect x="{x:.1f}" y="{y + 3:.1f}" width="{abs(value * scale):.1f}"'
            f' height="{row - 6:.1f}"'
            f' fill="{colour}"><title>{_esc(name)}: {_esc(label(value))}</title></rect>'
            f'<text x="{name_w + bar_area + 6:.1f}" y="{y + 15:.1f}" font-size="12"'
            f' style="{_FONT}">{_esc(label(value))}</text>'
        )
    out.append(
        f'<line x1="{zero:.1f}" y1="2" x2="{zero:.1f}" y2="{height - 2:.1f}" stroke="#999"/></svg>'
    )
    return "".join(out)


# -- tables shared by both renderings -----------------------------------------------------------


def human_bytes(size: int) -> str:
    """A byte count in binary units: ``86.6 MiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def _value(result: MetricResult) -> str:
    if result.metric == "size_bytes":
        return human_bytes(int(result.value))
    text = _num(result.value)
    if result.ci_low is not None and result.ci_high is not None:
        text += f" [{_num(result.ci_low)}, {_num(result.ci_high)}]"
    return text


@dataclass(frozen=True)
class _Cell:
    text: str
    best: bool = False


@dataclass(frozen=True)
class _Table:
    header: list[str]
    rows: list[list[_Cell]]


def _plain(*cells: str) -> list[_Cell]:
    return [_Cell(c) for c in cells]


LINEAGE_LEGEND = (
    "Parents above their children; green: verdict pass, red: fail, grey: none, orange: archived"
    " by the policy's gates."
)
NO_COMPARISONS = "No evaluated descendant has parents."
PROBED_NOTE = (
    "† no classification head: scored through a linear probe fitted on the suite's optimize"
    " data, so the scores measure its features."
)


def _probed(entry: Entry) -> bool:
    return entry.scorecard is not None and entry.name in entry.scorecard.probed


def _column(entry: Entry) -> str:
    return entry.name + (" †" if _probed(entry) else "")


def _scorecard_table(report: Report) -> _Table:
    """One column per evaluated descendant, one row per ``(metric, dataset)``.

    The best value of a row follows the metric's direction; ties are all best, and a row where
    every descendant scores the same marks none.
    """
    scored = [e.scorecard for e in report.scored if e.scorecard is not None]
    table = _Table(
        ["metric", "dataset", *(_column(e) for e in report.scored)],
        [_plain("suite", "", *(f"{c.suite.name} {c.suite.version}" for c in scored))],
    )
    keys: dict[tuple[str, str], str] = {}
    for card in scored:
        for m in card.metrics:
            keys.setdefault((m.metric, m.dataset), m.direction)
    for (metric, dataset), direction in keys.items():
        results = [card.metric(f"{dataset}/{metric}") for card in scored]
        values = [r.value for r in results if r is not None]
        pick = max if direction == "maximize" else min
        best = pick(values) if len(set(values)) > 1 else None
        cells = [_Cell("") if r is None else _Cell(_value(r), r.value == best) for r in results]
        table.rows.append(_plain(metric, dataset) + cells)
    return table


def _scores(values: Mapping[str, float], keys: Sequence[str]) -> list[str]:
    return [_num(values[k]) if k in values else "—" for k in keys]


def _comparison_table(entry: Entry) -> tuple[_Table, list[tuple[str, float]]]:
    """The subject and every model it was compared with on the objective's metrics."""
    card = entry.scorecard
    assert card is not None and card.objective is not None
    keys, value = card.objective.metrics, card.objective.value
    subject = {m.key: m.value for m in card.metrics}
    table = _Table(["model", "role", *keys, "objective", "subject ahead by"], [])
    table.rows.append(_plain(entry.name, "subject", *_scores(subject, keys), _num(value), ""))
    bars = [(entry.name, value)]
    for c in card.comparisons:
        objective = objective_of(card, c.metrics)
        scores = _scores(c.metrics, keys)
        if objective is None:
            table.rows.append(_plain(c.name, c.role, *scores, "—", ""))
            continue
        table.rows.append(
            _plain(c.name, c.role, *scores, _num(objective), f"{value - objective:+.3f}")
        )
        bars.append((c.name, objective))
    return table, bars


def _comparison_summary(entry: Entry) -> str:
    card = entry.scorecard
    assert card is not None and card.objective is not None
    objective = card.objective
    text = f"Objective {_num(objective.value)} (mean of {_and(objective.metrics)})"
    if objective.best_parent is not None and objective.best_parent_value is not None:
        text += f"; best parent {objective.best_parent} at {_num(objective.best_parent_value)}"
    if objective.net_gain is not None:
        text += f"; net gain over the best parent {objective.net_gain:+.3f}"
    return text + "."


def _niches(entry: Entry) -> list[str]:
    card = entry.scorecard
    assert card is not None
    return [
        f"niche {n.probe} of {n.parent} ({n.metric}): parent {_num(n.parent_value)},"
        f" {entry.name} {_num(n.child_value)} ({n.child_value - n.parent_value:+.3f})"
        for n in card.niches
    ]


def _cost_table(report: Report) -> _Table:
    table = _Table(["descendant", "parameters", "weights", "package", "latency per example"], [])
    for entry in report.entries:
        profile = entry.scorecard.profile if entry.scorecard else None
        artifact = entry.status.artifact
        table.rows.append(
            _plain(
                entry.name,
                f"{profile.parameters:,}" if profile else "—",
                f"{human_bytes(profile.size_bytes)} ({profile.size_bytes:,} B)" if profile else "—",
                human_bytes(artifact.size_bytes) if artifact else "—",
                f"{profile.latency_ms_per_example:.2f} ms" if profile else "—",
            )
        )
    return table


def _verdict_table(report: Report) -> _Table:
    table = _Table(["descendant", "phase", "stage", "verdict", "suite", "policy"], [])
    for entry in report.entries:
        status = entry.status
        if entry.scorecard is None:
            suite = "not evaluated"
        elif entry.scorecard.reasons:
            suite = "; ".join(entry.scorecard.reasons)
        else:
            suite = "every threshold met" if entry.verdict == "pass" else ""
        # The policy's word: its evaluation gates once evaluated, else why the flow stopped.
        evaluated = next((c for c in status.conditions if c.type == "Evaluated"), None)
        policy = evaluated.message if evaluated is not None else status.message
        table.rows.append(
            _plain(
                entry.name,
                status.phase,
                status.stage or "—",
                entry.verdict or "none",
                suite,
                policy or "",
            )
        )
    return table


def _compared(report: Report) -> list[Entry]:
    """The descendants with parents and an objective to hold against theirs."""
    return [e for e in report.entries if e.parents and e.scorecard and e.scorecard.objective]


def _profiled(report: Report) -> list[tuple[Entry, Profile]]:
    return [(e, e.scorecard.profile) for e in report.entries if e.scorecard and e.scorecard.profile]


# -- breeding runs ----------------------------------------------------------------------------


def recipe_file(run: str) -> str:
    """The file beside the report that holds a run's winning recipe as a Descendant manifest."""
    return f"{run}-best.yaml"


def pareto_file(run: str) -> str:
    """The file beside the report that holds a run's Pareto plot (for the Markdown)."""
    return f"{run}-pareto.svg"


def _run_lines(run: RunEntry) -> list[str]:
    status = run.status
    lines = [
        f"{status.phase}: {status.message or 'no reason recorded'}.",
        f"{status.trials_done} trials scored, {status.trials_failed} failed, over"
        f" {status.generation + 1} generations; ledger {status.ledger_uri or 'not written'}.",
    ]
    best = status.best
    if best is not None:
        values = ", ".join(f"{k} {_num(v)}" for k, v in best.objectives.items())
        lines.append(
            f"Best: trial {best.trial} of generation {best.generation}, fitness"
            f" {_num(best.fitness)} ({values}): {best.recipe};"
            f" its descendant {best.descendant or 'was not bred'}."
        )
    front = [p.descendant or f"trial {p.trial}" for p in status.pareto_front]
    lines.append(f"Pareto front ({len(front)}): {_and(front)}." if front else "No feasible trial.")
    return lines


def pareto_svg(run: RunEntry) -> str:
    """The run's scored trials as a scatter plot, its Pareto front dark and its best ringed.

    With two objectives or more, the first two are the axes; with one, the trial number and
    the objective. Failed trials are not drawn.
    """
    trials = [t for t in (run.ledger.trials if run.ledger else []) if t.values is not None]
    metrics = list(trials[0].values or {}) if trials else []
    front = {p.trial for p in run.status.pareto_front}
    best = run.status.best.trial if run.status.best else None
    if len(metrics) >= 2:
        xlabel, ylabel = metrics[0], metrics[1]
        points = [(t, (t.values or {})[xlabel], (t.values or {})[ylabel]) for t in trials]
    else:
        xlabel, ylabel = "trial", metrics[0] if metrics else "objective"
        points = [(t, float(t.number), (t.values or {}).get(ylabel, 0.0)) for t in trials]
    width, height, pad = 420.0, 300.0, 48.0

    def scale(values: Sequence[float], size: float, flip: bool) -> Callable[[float], float]:
        lo, hi = min(values, default=0.0), max(values, default=1.0)
        span = (hi - lo) or 1.0

        def at(v: float) -> float:
            f = (v - lo) / span
            return pad + (1 - f if flip else f) * (size - 2 * pad)

        return at

    x = scale([p[1] for p in points], width, False)
    y = scale([p[2] for p in points], height, True)
    title = f"{run.name}: trials on {xlabel} and {ylabel}; Pareto front dark, best ringed"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="pareto" width="{width:.0f}"'
        f' height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
        f' aria-label="{_esc(title)}"><title>{_esc(title)}</title>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"'
        ' stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
        f'<text x="{width / 2:.0f}" y="{height - 12:.0f}" text-anchor="middle" font-size="12"'
        f' style="{_FONT}">{_esc(xlabel)}</text>',
        f'<text x="14" y="{height / 2:.0f}" text-anchor="middle" font-size="12"'
        f' transform="rotate(-90 14 {height / 2:.0f})" style="{_FONT}">{_esc(ylabel)}</text>',
    ]
    for record, vx, vy in sorted(points, key=lambda p: p[0].number in front):
        on_front = record.number in front
        fill = "#1f5f99" if on_front else "#b8cde3"
        values = ", ".join(f"{k} {_num(v)}" for k, v in (record.values or {}).items())
        out.append(
            f'<circle class="trial{" front" if on_front else ""}" data-trial="{record.number}"'
            f' cx="{x(vx):.1f}" cy="{y(vy):.1f}" r="5" fill="{fill}">'
            f"<title>trial {record.number} (generation {record.generation}): {_esc(values)}"
            "</title></circle>"
        )
        if record.number == best:
            out.append(
                f'<circle class="best" cx="{x(vx):.1f}" cy="{y(vy):.1f}" r="9" fill="none"'
                ' stroke="#c62828" stroke-width="2"/>'
            )
    out.append("</svg>")
    return "".join(out)


def _generation_table(run: RunEntry) -> _Table:
    table = _Table(
        ["generation", "scored", "failed", "best fitness", "mean fitness", "front", "improved"], []
    )
    for g in run.status.history:
        table.rows.append(
            _plain(
                str(g.generation),
                str(g.trials),
                str(g.failed),
                _num(g.best_fitness) if g.best_fitness is not None else "—",
                _num(g.mean_fitness) if g.mean_fitness is not None else "—",
                str(g.front_size),
                "yes" if g.improved else "no",
            )
        )
    return table


GAP_RULE = (
    "Each objective's value on optimize data (the trial's, from the ledger) is set against the"
    " same metric of the descendant's scorecard on the gate dataset named like the optimize one"
    " with 'optimize' replaced by 'gate' (sentiment-optimize: sentiment-gate). The gap is"
    " optimize minus gate, signed so that a positive gap is always worse on gate data:"
    " the search overfitted its optimize data by that much."
)


@dataclass(frozen=True)
class Gap:
    """One objective of one front descendant, on optimize data and on its gate counterpart."""

    descendant: str
    """The front descendant."""
    trial: int
    """Its trial."""
    objective: str
    """The objective, ``<optimize dataset>/<metric>``."""
    optimize: float
    """The trial's value on optimize data."""
    gate: str | None
    """The gate dataset paired with it; ``None`` where the suite has none by the rule."""
    gate_value: float | None
    """The descendant's value there, from its scorecard."""
    gap: float | None
    """How much worse it is on gate data than on optimize data (negative: better)."""


def gaps(report: Report, run: RunEntry) -> list[Gap]:
    """The optimize-vs-gate gap of every objective of every bred descendant of the front.

    The pairing rule is :data:`GAP_RULE`.
    """
    out = []
    for point in run.status.pareto_front:
        entry = report.entry(point.descendant) if point.descendant else None
        record = run.trial(point.trial)
        if entry is None or entry.scorecard is None or record is None or not record.values:
            continue
        for objective, value in record.values.items():
            dataset, _, metric = objective.rpartition("/")
            gate = dataset.replace("optimize", "gate") if "optimize" in dataset else None
            result = entry.scorecard.metric(f"{gate}/{metric}") if gate else None
            if result is None:
                out.append(Gap(entry.name, point.trial, objective, value, None, None, None))
                continue
            sign = 1.0 if result.direction == "maximize" else -1.0
            gap = sign * (value - result.value)
            out.append(Gap(entry.name, point.trial, objective, value, gate, result.value, gap))
    return out


def _gap_table(report: Report, run: RunEntry) -> _Table:
    table = _Table(
        ["descendant", "trial", "objective", "optimize (trial)", "gate dataset", "gate", "gap"],
        [],
    )
    for g in gaps(report, run):
        table.rows.append(
            [
                _Cell(g.descendant),
                _Cell(str(g.trial)),
                _Cell(g.objective),
                _Cell(_num(g.optimize)),
                _Cell(g.gate or "no gate counterpart"),
                _Cell(_num(g.gate_value) if g.gate_value is not None else "—"),
                _Cell(f"{g.gap:+.3f}" if g.gap is not None else "—", (g.gap or 0.0) > 0.0),
            ]
        )
    return table


RECIPE_NOTE = (
    "The winning recipe as a Descendant manifest, to `kubectl apply` in a namespace that holds"
    " the same policy, suite and parents. Its parents stay pinned to the artifacts the trials"
    " were scored against (content ids: the same founders and recipes give the same ids), so a"
    " cluster refuses it against other parents; its origin is left out, since no BreedingRun"
    " of that name exists there."
)


def recipe_yaml(run: RunEntry) -> str | None:
    """The run's best Descendant as a manifest to apply on a cluster (see :data:`RECIPE_NOTE`)."""
    if run.best is None:
        return None
    manifest = run.best.to_wire()
    manifest["metadata"] = {"name": run.best.metadata.name}
    manifest["spec"].pop("origin", None)
    manifest.pop("status", None)
    head = f"# The best recipe of BreedingRun {run.name}, bred locally by `studbook breed`.\n"
    return head + yaml.safe_dump(manifest, sort_keys=False)


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color: #222; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: 0.4em; }
.meta { color: #666; }
.headline li { margin: 0.3em 0; font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.best { background: #e3f4e6; font-weight: bold; }
.scroll { overflow-x: auto; }
svg { max-width: 100%; height: auto; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
"""


def _html_table(table: _Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="best">{_esc(c.text)}</td>' if c.best else f"<td>{_esc(c.text)}</td>"
            for c in row
        )
        + "</tr>"
        for row in table.rows
    )
    table_html = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="scroll">{table_html}</div>'


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page: inline CSS and SVG, no script, no link out."""
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Breeding report: {_esc(report.workspace)}</title>\n<style>{_CSS}</style>\n"
        "</head>\n<body>\n<h1>Breeding report</h1>\n"
        f'<p class="meta">Workspace {_esc(report.workspace)}: {len(report.entries)}'
        " descendants.</p>\n",
        '<section id="headline"><h2>Headline</h2><ul class="headline">',
        *(f"<li>{_esc(line)}</li>" for line in headline(report)),
        "</ul></section>\n",
        '<section id="lineage"><h2>Lineage</h2>',
        f"<p>{_esc(LINEAGE_LEGEND)}</p>",
        lineage_svg(report),
        "</section>\n",
        '<section id="scorecards"><h2>Scorecards</h2>',
        "<p>Value [confidence interval]; the best value of each row is highlighted.</p>",
        _html_table(_scorecard_table(report)),
        f"<p>{_esc(PROBED_NOTE)}</p>" if any(_probed(e) for e in report.scored) else "",
        "</section>\n",
        '<section id="comparisons"><h2>Against parents, baseline and ensemble</h2>',
    ]
    compared = _compared(report)
    if not compared:
        parts.append(f"<p>{NO_COMPARISONS}</p>")
    for entry in compared:
        table, bars = _comparison_table(entry)
        parts += [
            f"<h3>{_esc(entry.name)} ({_esc(entry.operator)} of {_esc(_and(entry.parents))})</h3>",
            f"<p>{_esc(_comparison_summary(entry))}</p>",
            _html_table(table),
            bar_chart(bars, _num, f"objective: {entry.name} and its comparisons", [entry.name]),
        ]
        niches = _niches(entry)
        if niches:
            parts.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in niches) + "</ul>")
    parts += [
        "</section>\n",
        '<section id="cost"><h2>Size and latency</h2>',
        _html_table(_cost_table(report)),
    ]
    profiled = _profiled(report)
    if profiled:
        sizes = [(e.name, float(p.size_bytes)) for e, p in profiled]
        latencies = [(e.name, float(p.latency_ms_per_example)) for e, p in profiled]
        parts += [
            '<div class="charts"><div><h3>Weights</h3>',
            bar_chart(sizes, lambda v: human_bytes(int(v)), "weight bytes per descendant"),
            "</div><div><h3>Latency per example</h3>",
            bar_chart(latencies, lambda v: f"{v:.2f} ms", "latency per example per descendant"),
            "</div></div>",
        ]
    parts += [
        "</section>\n",
        '<section id="verdicts"><h2>Verdicts</h2>',
        _html_table(_verdict_table(report)),
        "</section>\n",
    ]
    for run in report.runs:
        parts += [
            f'<section id="run-{_esc(run.name)}"><h2>Breeding run {_esc(run.name)}</h2>',
            "<ul>",
            *(f"<li>{_esc(line)}</li>" for line in _run_lines(run)),
            "</ul>",
        ]
        if run.best is not None:
            name = recipe_file(run.name)
            parts.append(
                f'<p>Winning recipe: <a href="{_esc(name)}">{_esc(name)}</a>.'
                f" {_esc(RECIPE_NOTE)}</p>"
            )
        parts += [
            "<h3>Pareto front</h3>",
            pareto_svg(run),
            "<h3>Fitness by generation</h3>",
            _html_table(_generation_table(run)),
            "<h3>Overfitting: optimize data (trial) vs gate data (scorecard)</h3>",
            f"<p>{_esc(GAP_RULE)}</p>",
            _html_table(_gap_table(report, run)),
            "</section>\n",
        ]
    parts.append("</body>\n</html>\n")
    return "".join(parts)


# -- Markdown ---------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: _Table) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    for row in table.rows:
        cells = [f"**{_md_cell(c.text)}**" if c.best else _md_cell(c.text) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(report: Report, lineage_image: str = LINEAGE_FILE) -> str:
    """The report as Markdown; the lineage picture is the SVG file ``lineage_image`` beside it."""
    parts = [
        "# Breeding report\n",
        f"Workspace `{report.workspace}`: {len(report.entries)} descendants.\n",
        "## Headline\n",
        "".join(f"- {line}\n" for line in headline(report)),
        "## Lineage\n",
        LINEAGE_LEGEND + "\n",
        f"![lineage graph]({lineage_image})\n",
        "## Scorecards\n",
        "Value [confidence interval]; the best value of each row in bold.\n",
        _md_table(_scorecard_table(report)),
        PROBED_NOTE + "\n" if any(_probed(e) for e in report.scored) else "",
        "## Against parents, baseline and ensemble\n",
    ]
    compared = _compared(report)
    if not compared:
        parts.append(NO_COMPARISONS + "\n")
    for entry in compared:
        table, _bars = _comparison_table(entry)
        parts += [
            f"### {entry.name} ({entry.operator} of {_and(entry.parents)})\n",
            _comparison_summary(entry) + "\n",
            _md_table(table),
        ]
        niches = _niches(entry)
        if niches:
            parts.append("".join(f"- {n}\n" for n in niches))
    parts += [
        "## Size and latency\n",
        _md_table(_cost_table(report)),
        "## Verdicts\n",
        _md_table(_verdict_table(report)),
    ]
    for run in report.runs:
        parts += [
            f"## Breeding run {run.name}\n",
            "".join(f"- {line}\n" for line in _run_lines(run)),
        ]
        if run.best is not None:
            name = recipe_file(run.name)
            parts.append(f"Winning recipe: [{name}]({name}). {RECIPE_NOTE}\n")
        parts += [
            "### Pareto front\n",
            f"![Pareto front of {run.name}]({pareto_file(run.name)})\n",
            "### Fitness by generation\n",
            _md_table(_generation_table(run)),
            "### Overfitting: optimize data (trial) vs gate data (scorecard)\n",
            GAP_RULE + "\n",
            _md_table(_gap_table(report, run)),
        ]
    return "\n".join(parts)


def write(report: Report, out: Path) -> list[Path]:
    """Write ``report.html``, ``report.md`` and ``lineage.svg`` into ``out``; their paths.

    Per BreedingRun also its Pareto plot (:func:`pareto_file`) and its winning recipe
    (:func:`recipe_file`).
    """
    out.mkdir(parents=True, exist_ok=True)
    files = {
        out / HTML_FILE: to_html(report),
        out / MARKDOWN_FILE: to_markdown(report),
        out / LINEAGE_FILE: lineage_svg(report),
    }
    for run in report.runs:
        files[out / pareto_file(run.name)] = pareto_svg(run)
        recipe = recipe_yaml(run)
        if recipe is not None:
            files[out / recipe_file(run.name)] = recipe
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
