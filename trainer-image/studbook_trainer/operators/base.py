"""What every breeding operator shares: the run context, errors and the registry."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from studbook_trainer.failures import StepRefused

log = logging.getLogger("studbook_trainer")


class OperatorError(StepRefused, ValueError):
    """A task the operator cannot run: bad configuration, missing or unsuitable parents."""


@dataclass(frozen=True)
class LocalParent:
    """A parent available as a local directory."""

    name: str
    path: Path


@dataclass(frozen=True)
class RunContext:
    """Where an operator reads its inputs and writes its output."""

    parents: Sequence[LocalParent]
    """Parents in task order, already local."""
    out_dir: Path
    """An empty directory the operator fills (it becomes the package)."""
    datasets: Mapping[str, Path] = field(default_factory=dict)
    """Local JSONL files by dataset name."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda[:n]``."""

    def parent(self, name: str) -> LocalParent:
        """A parent by name."""
        for p in self.parents:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parents) or "none"
        raise OperatorError(f"no parent named {name!r} (parents: {known})")

    def dataset(self, name: str) -> Path:
        """A dataset by name."""
        if name not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise OperatorError(f"no dataset named {name!r} (datasets: {known})")
        return self.datasets[name]

    def torch_device(self) -> Any:
        """The torch device to compute on."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class Operator(ABC):
    """A breeding operator: parents (and data) in, one output directory out."""

    name: ClassVar[str]
    """The registry key (the ``kind`` of the descendant's operator)."""
    reference: ClassVar[str]
    """Where the technique is described."""
    plan_type: ClassVar[type]
    """The plan dataclass the operator runs."""

    @abstractmethod
    def run(self, plan: Any, ctx: RunContext) -> dict[str, Any]:
        """Produce the output in ``ctx.out_dir``; return a JSON-ready report."""


OPERATORS: dict[str, Operator] = {}
"""The operators by name."""


def register(op: Operator) -> Operator:
    """Add an operator to :data:`OPERATORS`."""
    if op.name in OPERATORS:
        raise ValueError(f"operator {op.name!r} is already registered")
    OPERATORS[op.name] = op
    return op


def get_operator(name: str) -> Operator:
    """A registered operator; an unknown name is an :class:`OperatorError`."""
    try:
        return OPERATORS[name]
    except KeyError:
        known = ", ".join(sorted(OPERATORS))
        raise OperatorError(f"unknown operator {name!r}; known: {known}") from None
