"""The ledger of a ``BreedingRun``: every trial, in the order it was proposed and scored.

A plain JSON document, kept as a store object beside the run (its status names it). It holds
what the status cannot: every recipe, score, failure and timing. It also holds the order of
events, so the search can be rebuilt from it exactly: proposals and results are replayed in
that order and the next proposal is the one an uninterrupted run would have made.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from studbook.api.base import ApiModel
from studbook.api.common import Name
from studbook.api.operators import MergeConfig
from studbook.api.run import Strategy

TrialState = Literal["running", "succeeded", "failed"]
"""Where a trial is: handed out and not told yet, scored, or failed."""

Seconds = Annotated[float, Field(ge=0.0)]


class TrialRecord(ApiModel):
    """One trial: its genes, the recipe they make and what came of it."""

    number: Annotated[int, Field(ge=0)]
    """The trial's number: trials are numbered in the order they were proposed."""
    generation: Annotated[int, Field(ge=0)]
    """Its generation: ``number // budget.population``."""
    asked_after: Annotated[int, Field(ge=0)]
    """How many results had been told when it was proposed."""
    params: dict[str, float | str]
    """Its genes, by name, as the sampler proposed them."""
    recipe: MergeConfig
    """The merge recipe the genes make."""
    parents: Annotated[list[Name], Field(min_length=2, max_length=32)]
    """The parents a descendant of this recipe lists."""
    state: TrialState = "running"
    """Where the trial is."""
    told: Annotated[int, Field(ge=0)] | None = None
    """The position of its result among all results told; unset while running."""
    values: Annotated[dict[str, float], Field(max_length=8)] | None = None
    """Its value for each objective metric, once it succeeded."""
    failure: Annotated[str, Field(max_length=4096)] | None = None
    """Why it failed."""
    seconds: Seconds | None = None
    """Wall-clock seconds its evaluation took."""
    gpu_seconds: Seconds | None = None
    """GPU seconds its evaluation spent."""


class Ledger(ApiModel):
    """Every trial of one run, and what the search needs to rebuild itself from them."""

    strategy: Strategy
    """The strategy that proposed the trials."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    """The sampler's seed."""
    num_layers: Annotated[int, Field(ge=1)] | None = None
    """The parents' layer count the genome was built for (block and layer granularity)."""
    trials: list[TrialRecord] = []
    """The trials, by number."""
