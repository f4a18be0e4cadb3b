"""The typed API of Studbook's custom resources (group ``breeding.studbook.dev``, ``v1alpha1``).

These pydantic models are the single source of truth: the CRDs in ``crds/`` are generated from
them (:mod:`studbook.api.crdgen`), and manifests are validated with the same rules the API server
applies (:func:`parse_manifest`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from studbook.api.base import ApiModel, OneOf, Rule
from studbook.api.common import Compatibility, Condition, Niche, ParentRef, Resources
from studbook.api.descendant import Descendant, DescendantSpec, DescendantStatus
from studbook.api.operators import MergeConfig, OperatorSpec
from studbook.api.policy import BreedingPolicy, BreedingPolicySpec
from studbook.api.promotion import Promotion, PromotionSpec
from studbook.api.resource import API_VERSION, ObjectMeta, Resource
from studbook.api.run import BreedingRun, BreedingRunSpec
from studbook.api.suite import EvaluationSuite, EvaluationSuiteSpec

KINDS: dict[str, type[Resource]] = {
    cls.kind_name(): cls
    for cls in (BreedingPolicy, EvaluationSuite, Descendant, BreedingRun, Promotion)
}
"""Every Studbook resource class, by kind."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest."""

    field: str
    """The field at fault, as a dotted path from the manifest root (``spec.parents[1].name``)."""
    message: str
    """What is wrong with it."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ManifestError(ValueError):
    """A manifest that no Studbook API type accepts, with every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: invalid manifest\n{lines}")


def _path(loc: tuple[int | str, ...], extra: str = "") -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path + extra


def parse_manifest(obj: Mapping[str, Any], source: str = "<manifest>") -> Resource:
    """Validate one manifest as the API server would and return its typed resource.

    Validation runs in JSON mode and strict, so a string is never taken for a number, and the
    same rules the CRD's CEL expressions state are checked here. Raises :class:`ManifestError`.
    """
    if not isinstance(obj, Mapping):
        raise ManifestError(source, [Problem("", "a manifest must be a mapping")])
    if obj.get("apiVersion") != API_VERSION:
        got = obj.get("apiVersion")
        raise ManifestError(source, [Problem("apiVersion", f"expected {API_VERSION}, got {got!r}")])
    kind = obj.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(KINDS))
        raise ManifestError(source, [Problem("kind", f"unknown kind {kind!r}; one of {known}")])
    try:
        return cls.model_validate_json(json.dumps(obj, default=str))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            extra = str((item.get("ctx") or {}).get("field_path", ""))
            message = item["msg"].removeprefix("Value error, ")
            problems.append(Problem(_path(item["loc"], extra), message))
        raise ManifestError(source, problems) from None


__all__ = [
    "API_VERSION",
    "KINDS",
    "ApiModel",
    "BreedingPolicy",
    "BreedingPolicySpec",
    "BreedingRun",
    "BreedingRunSpec",
    "Compatibility",
    "Condition",
    "Descendant",
    "DescendantSpec",
    "DescendantStatus",
    "EvaluationSuite",
    "EvaluationSuiteSpec",
    "ManifestError",
    "MergeConfig",
    "Niche",
    "ObjectMeta",
    "OneOf",
    "OperatorSpec",
    "ParentRef",
    "Problem",
    "Promotion",
    "PromotionSpec",
    "Resource",
    "Resources",
    "Rule",
    "parse_manifest",
]
