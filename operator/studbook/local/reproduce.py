"""``studbook reproduce``: re-breed one artifact from its lineage and compare what comes out.

A package is a function of its inputs (``lineage.json``: parents, operator, config hash, dataset
digests, code version), so breeding the same recipe again must give the same id. The lineage
holds only the config's hash; the recipe itself comes from the Descendant manifest, which is
checked field by field against the lineage, down to the founders, before anything runs. Then
the breed step alone runs, as ``studbook breed`` runs it, on parents copied (verified) from the
store into a scratch store, and the two packages' file lists are compared.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from studbook.api import Problem
from studbook.api.canonical import digest_of
from studbook.api.descendant import Descendant
from studbook.api.task import ParentArtifact
from studbook.artifacts import Lineage, Manifest, Store
from studbook.artifacts.digest import FileEntry
from studbook.artifacts.errors import ArtifactError
from studbook.breeding.tasks import breed_task
from studbook.local.manifests import Manifests
from studbook.local.pipeline import StepProcesses
from studbook.local.steps import seal_output
from studbook.local.workspace import Activity


class ReproduceError(Exception):
    """Why an artifact could not be re-bred: one line, naming the file and field at fault."""


def mismatch(
    manifests: Manifests,
    descendant: Descendant,
    artifact: str,
    lineage_of: Callable[[str], Lineage],
) -> Problem | None:
    """The first field of a descendant's spec that is not the recipe of ``artifact``, or None.

    Operator, config hash, dataset digests and parents (by position, each checked the same way
    against its own manifest, down to the founders, whose import digest pins their files).
    """
    lineage = lineage_of(artifact)
    spec = descendant.spec
    kind = spec.operator.kind
    if kind != lineage.operator:
        return Problem("spec.operator.kind", f"{kind}, but the lineage records {lineage.operator}")
    configured = digest_of(spec.operator.content_config())
    if configured != lineage.config_hash:
        return Problem(
            f"spec.operator.{kind}",
            f"the configuration hashes to {configured}, the lineage records {lineage.config_hash}",
        )
    data = {d.name: d.digest for d in spec.data}
    recorded = lineage.dataset_digests
    for name in sorted(set(data) | set(recorded)):
        if data.get(name) != recorded.get(name):
            return Problem(
                "spec.data",
                f"dataset {name}: {data.get(name, 'not declared')}, "
                f"the lineage records {recorded.get(name, 'none')}",
            )
    if len(spec.parents) != len(lineage.parents):
        return Problem(
            "spec.parents",
            f"{len(spec.parents)} parent(s), the lineage records {len(lineage.parents)}",
        )
    for index, (ref, parent_id) in enumerate(zip(spec.parents, lineage.parents, strict=True)):
        parent = manifests.descendants[ref.name]
        below = mismatch(manifests, parent, parent_id, lineage_of)
        if below is not None:
            where = manifests.source(parent)
            return Problem(
                f"spec.parents[{index}]", f"{ref.name} is not {parent_id}: {where}: {below}"
            )
    return None


def registered_name(registry: dict[str, Any], artifact: str) -> str | None:
    """The descendant a workspace registry records ``artifact`` for, if any."""
    for name, entry in registry.items():
        if (entry.get("status", {}).get("artifact") or {}).get("id") == artifact:
            return str(name)
    return None


def recipe(manifests: Manifests, store: Store, artifact: str, name: str | None) -> Descendant:
    """The descendant whose spec is the recipe of ``artifact``, checked against its lineage.

    Named, the descendant must match, else the field that does not is the error; unnamed, it is
    the one descendant of the manifests that matches.
    """
    lineage_of = cache(store.lineage)
    lineage = lineage_of(artifact)
    if name is not None:
        descendant = manifests.descendants.get(name)
        if descendant is None:
            raise ReproduceError(f"the manifests hold no descendant {name}")
        problem = mismatch(manifests, descendant, artifact, lineage_of)
        if problem is not None:
            where = manifests.source(descendant)
            raise ReproduceError(f"{where}: {name} is not the recipe of {artifact}: {problem}")
        return descendant
    found = [
        d
        for d in manifests.descendants.values()
        if mismatch(manifests, d, artifact, lineage_of) is None
    ]
    if len(found) != 1:
        which = ", ".join(d.metadata.name for d in found) or "no descendant"
        raise ReproduceError(
            f"{which} of the manifests matches the lineage of {artifact} (operator "
            f"{lineage.operator}, config {lineage.config_hash}); name one with --name"
        )
    return found[0]


@dataclass(frozen=True)
class Difference:
    """The first file, in path order, that two packages do not share byte for byte."""

    path: str
    original: FileEntry | None
    """The file in the original package; None if only the re-bred one has it."""
    rebred: FileEntry | None
    """The file in the re-bred package; None if only the original has it."""


def first_difference(original: Manifest, rebred: Manifest) -> Difference | None:
    """The first differing file of two manifests, by path; None if their files are the same."""
    left = {f.path: f for f in original.files}
    right = {f.path: f for f in rebred.files}
    for path in sorted(left.keys() | right.keys()):
        a, b = left.get(path), right.get(path)
        if a is None or b is None or (a.size, a.sha256) != (b.size, b.sha256):
            return Difference(path, a, b)
    return None


@dataclass(frozen=True)
class Outcome:
    """An artifact and what breeding its recipe again gave."""

    original: Manifest
    original_lineage: Lineage
    rebred: Manifest
    rebred_lineage: Lineage

    @property
    def matches(self) -> bool:
        """Whether the re-bred artifact is the original one."""
        return self.rebred.id == self.original.id

    def __str__(self) -> str:
        if self.matches:
            return f"match: {self.original.id}"
        found = first_difference(self.original, self.rebred)
        if found is None:
            what = "the same files hashed with other digest parameters"
        else:
            a, b = found.original, found.rebred
            if a is None or b is None:
                side, entry = ("the re-bred", b) if a is None else ("the original", a)
                assert entry is not None
                detail = f"only in {side}, {entry.size} bytes"
            else:
                detail = f"sha256 {a.sha256[:12]}… vs {b.sha256[:12]}…, {a.size} vs {b.size} bytes"
            what = f"first differing file {found.path} ({detail})"
        versions = self.original_lineage.code_version, self.rebred_lineage.code_version
        if versions[0] != versions[1]:
            what += f"; bred by trainer {versions[0]}, re-bred by {versions[1]}"
        return f"differs: re-bred {self.rebred.id}, {what}"


def rebreed(
    store: Store,
    manifests: Manifests,
    descendant: Descendant,
    artifact: str,
    scratch: Path,
    activity: Activity,
) -> Outcome:
    """Run the breed step of ``artifact``'s recipe again into a store under ``scratch``.

    ``descendant`` is the recipe, as :func:`recipe` checked it. The parents are the lineage's,
    copied from ``store`` (re-hashed on the way) into the scratch store, which the step reads
    them from and seals its output into; the original store is only read.
    """
    lineage = store.lineage(artifact)
    scratch_store = Store.open(scratch / "store")
    parents = []
    for ref, parent_id in zip(descendant.spec.parents, lineage.parents, strict=True):
        copy = scratch / "parents" / ref.name
        fetched = store.fetch(parent_id, copy)
        sealed = scratch_store.seal(copy, params=fetched.params)
        shutil.rmtree(copy)
        if sealed.id != parent_id:
            raise ReproduceError(f"parent {ref.name} sealed again as {sealed.id}, not {parent_id}")
        parents.append(
            ParentArtifact(
                name=ref.name,
                artifact_id=parent_id,
                uri=scratch_store.package_path(parent_id),
                niche=manifests.descendants[ref.name].spec.niche,
            )
        )
    output = scratch / "output"
    output.mkdir()
    task = breed_task(descendant, parents, str(scratch / "store"), str(output))
    task_path = scratch / "breed.task.json"
    task_path.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
    code, reason = StepProcesses().run(
        ["run", "--task", str(task_path)], scratch / "breed.log", activity
    )
    if code != 0:
        raise ReproduceError(f"the breed step failed: {reason}")
    try:
        result = seal_output(scratch_store, task, str(output), None)
    except FileNotFoundError:
        raise ReproduceError("the breed step succeeded but left no model") from None
    except ArtifactError as error:
        raise ReproduceError(f"the breed step's output was refused: {error}") from None
    rebred = result.artifact.id
    return Outcome(
        store.manifest(artifact),
        lineage,
        scratch_store.manifest(rebred),
        scratch_store.lineage(rebred),
    )
