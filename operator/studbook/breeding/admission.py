"""Admission of a Descendant: what the policy allows, before any Job exists.

A pure function of the spec, the policy and what is known of the parents. The webhook, the
reconciler and ``studbook breed`` all call :func:`admit`, so a manifest is refused with the same
reasons wherever it goes. A refusal is terminal; a parent that is not Ready yet is not a refusal
but something to wait for.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import combinations

from studbook.api import reasons
from studbook.api.common import Compatibility, Toleration
from studbook.api.descendant import DescendantSpec
from studbook.api.operators import LoraConfig, MergeConfig
from studbook.api.policy import LABEL_GPU_PRODUCT, BreedingPolicySpec, MutationBudget


@dataclass(frozen=True)
class ParentFacts:
    """What the caller established about one parent (by looking it up and verifying it)."""

    name: str
    """The parent's name."""
    ready: bool
    """Whether its artifact is sealed, evaluated and signed (phase Ready)."""
    compatibility: Compatibility
    """The parent's compatibility contract."""
    license: str
    """The parent's licence."""
    failed: str | None = None
    """Why the parent will never be Ready (it failed or was rejected), if so."""
    artifact_id: str | None = None
    """The parent's artifact id, once sealed."""
    signed: bool = False
    """Whether a signature by a signer the policy trusts verified."""
    intact: bool = True
    """Whether the stored files still hash to the artifact id."""
    restrictions: frozenset[str] = frozenset()
    """Data restrictions the parent carries (its own data and its ancestors')."""
    licenses: frozenset[str] = frozenset()
    """Licences in the parent's lineage, its own included."""


@dataclass(frozen=True)
class Refusal:
    """One reason a descendant is not admitted."""

    reason: str
    """A CamelCase constant of :mod:`studbook.api.reasons`."""
    field: str
    """The spec field at fault."""
    message: str
    """What is wrong, for people."""

    def __str__(self) -> str:
        return f"{self.reason}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Decision:
    """The outcome of admission."""

    refusals: tuple[Refusal, ...] = ()
    """Why the descendant is refused; empty when admitted."""
    waiting_for: tuple[str, ...] = ()
    """Parents that exist but are not Ready yet; admission is decided once they are."""
    missing: tuple[str, ...] = ()
    """Parents that do not exist (yet: manifests applied together arrive in any order)."""
    restrictions: frozenset[str] = field(default_factory=frozenset)
    """Data restrictions the descendant inherits."""

    @property
    def admitted(self) -> bool:
        """Admitted: nothing refused and nothing to wait for."""
        return not self.refusals and not self.waiting_for and not self.missing


WEIGHT_SPACE_FIELDS = ("base_family", "tokenizer_id", "architecture")
"""What weight-space operators need equal across parents."""


def is_weight_space(spec: DescendantSpec) -> bool:
    """Whether the operator combines the parents' weights (merges, adapter composition)."""
    op = spec.operator
    return op.kind == "merge" or (
        op.kind == "lora" and op.lora is not None and op.lora.compose is not None
    )


def _operator(spec: DescendantSpec, policy: BreedingPolicySpec) -> Iterator[Refusal]:
    if spec.operator.kind not in policy.allowed_operators:
        allowed = ", ".join(policy.allowed_operators)
        yield Refusal(
            reasons.OPERATOR_FORBIDDEN,
            "spec.operator.kind",
            f"operator {spec.operator.kind!r} is not allowed by the policy (allowed: {allowed})",
        )


def _merge_weights(config: MergeConfig) -> Iterator[tuple[str, float]]:
    for i, w in enumerate(config.weights):
        yield f"spec.operator.merge.weights[{i}].weight", w.weight
    for i, override in enumerate(config.overrides):
        for j, w in enumerate(override.weights or []):
            yield f"spec.operator.merge.overrides[{i}].weights[{j}].weight", w.weight


GPU_STEPS = ("breed", "evaluate")
"""The steps whose Jobs get the descendant's GPUs (signing needs none)."""


def job_deadline(spec: DescendantSpec, policy: BreedingPolicySpec | None) -> int:
    """Seconds one Job attempt may run: the descendant's own deadline, or the policy's.

    Where the policy is gone, the default policy's.
    """
    own = spec.resources.active_deadline_seconds
    budget = policy.mutation_budget if policy is not None else MutationBudget()
    return own if own is not None else budget.max_job_seconds


def gpu_hours_bound(spec: DescendantSpec, deadline: int) -> float:
    """The most GPU hours a descendant's Jobs can spend, each attempt ending at ``deadline``.

    Each GPU step runs at most ``1 + backoffLimit`` attempts.
    """
    resources = spec.resources
    attempts = len(GPU_STEPS) * (1 + resources.backoff_limit)
    return resources.gpus * deadline / 3600 * attempts


def _deadline(spec: DescendantSpec, policy: BreedingPolicySpec) -> Iterator[Refusal]:
    own, most = spec.resources.active_deadline_seconds, policy.mutation_budget.max_job_seconds
    if own is not None and own > most:
        yield Refusal(
            reasons.BUDGET_EXCEEDED,
            "spec.resources.activeDeadlineSeconds",
            f"activeDeadlineSeconds {own} exceeds the policy's maxJobSeconds of {most}",
        )


def _gpu_hours(spec: DescendantSpec, policy: BreedingPolicySpec) -> Iterator[Refusal]:
    limit = policy.mutation_budget.max_gpu_hours
    if limit is None:
        return
    deadline = job_deadline(spec, policy)
    bound = gpu_hours_bound(spec, deadline)
    resources = spec.resources
    if bound > limit:
        attempts = len(GPU_STEPS) * (1 + resources.backoff_limit)
        whose = "" if resources.active_deadline_seconds else " (the policy's maxJobSeconds)"
        yield Refusal(
            reasons.BUDGET_EXCEEDED,
            "spec.resources.activeDeadlineSeconds",
            f"GPU hours {bound:g} exceed the budget of {limit:g}: {resources.gpus} GPU(s) for up"
            f" to {deadline}s{whose} in each of {attempts} Job attempts"
            f" (breed and evaluate, 1 + backoffLimit {resources.backoff_limit} each)",
        )


def _budget(spec: DescendantSpec, policy: BreedingPolicySpec) -> Iterator[Refusal]:
    budget = policy.mutation_budget
    op = spec.operator
    config = op.config

    def over(path: str, what: str, value: float, limit: float) -> Refusal:
        return Refusal(
            reasons.BUDGET_EXCEEDED, path, f"{what} {value:g} exceeds the budget of {limit:g}"
        )

    if len(spec.parents) > budget.max_parents:
        yield over("spec.parents", "parent count", len(spec.parents), budget.max_parents)
    if spec.resources.gpus > budget.max_gpus:
        yield over("spec.resources.gpus", "GPUs", spec.resources.gpus, budget.max_gpus)
    steps = getattr(config, "steps", None)
    if steps is not None and steps > budget.max_steps:
        yield over(f"spec.operator.{op.kind}.steps", "steps", steps, budget.max_steps)
    rate = getattr(config, "learning_rate", None)
    if rate is not None and rate > budget.max_learning_rate:
        yield over(
            f"spec.operator.{op.kind}.learningRate", "learning rate", rate, budget.max_learning_rate
        )
    if isinstance(config, LoraConfig) and config.rank > budget.max_lora_rank:
        yield over("spec.operator.lora.rank", "LoRA rank", config.rank, budget.max_lora_rank)
    if op.prune is not None and op.prune.target_sparsity > budget.max_prune_sparsity:
        yield over(
            "spec.operator.prune.targetSparsity",
            "sparsity",
            op.prune.target_sparsity,
            budget.max_prune_sparsity,
        )
    if op.merge is not None:
        for path, weight in _merge_weights(op.merge):
            if abs(weight) > budget.max_merge_weight:
                yield over(path, "merge weight", abs(weight), budget.max_merge_weight)


def _covers(allowed: Toleration, asked: Toleration) -> bool:
    """Whether ``allowed`` tolerates every taint ``asked`` tolerates, for as long."""
    if allowed.key and asked.key != allowed.key:
        return False
    if allowed.operator == "Equal" and (
        asked.operator != "Equal" or (asked.value or "") != (allowed.value or "")
    ):
        return False
    if allowed.effect and asked.effect != allowed.effect:
        return False
    limit = allowed.toleration_seconds
    # tolerationSeconds bounds only NoExecute taints; without it they are tolerated forever.
    if limit is not None and asked.effect in (None, "NoExecute"):
        return asked.toleration_seconds is not None and asked.toleration_seconds <= limit
    return True


def _scheduling(spec: DescendantSpec, policy: BreedingPolicySpec) -> Iterator[Refusal]:
    rules = policy.scheduling
    resources = spec.resources
    labels = [
        (f"spec.resources.nodeSelector[{key}]", key, value)
        for key, value in sorted((resources.node_selector or {}).items())
    ]
    if resources.gpu_type:
        labels.append(("spec.resources.gpuType", LABEL_GPU_PRODUCT, resources.gpu_type))
    for where, key, value in labels:
        values = rules.allowed_node_selector.get(key)
        if values is None:
            listed = ", ".join(sorted(rules.allowed_node_selector)) or "none"
            yield Refusal(
                reasons.SCHEDULING_FORBIDDEN,
                where,
                f"node label {key!r} is not one the policy lets descendants select on"
                f" (allowed: {listed})",
            )
        elif value not in values:
            yield Refusal(
                reasons.SCHEDULING_FORBIDDEN,
                where,
                f"node label {key}={value!r} is not allowed by the policy"
                f" (allowed values: {', '.join(values)})",
            )
    for i, toleration in enumerate(resources.tolerations or []):
        if not any(_covers(allowed, toleration) for allowed in rules.allowed_tolerations):
            yield Refusal(
                reasons.SCHEDULING_FORBIDDEN,
                f"spec.resources.tolerations[{i}]",
                f"toleration {toleration.to_wire()} is not covered by one the policy allows",
            )
    priority = resources.priority_class_name
    if priority is not None and priority not in rules.allowed_priority_class_names:
        listed = ", ".join(rules.allowed_priority_class_names) or "none"
        yield Refusal(
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.priorityClassName",
            f"priority class {priority!r} is not allowed by the policy (allowed: {listed})",
        )


def _parents(
    spec: DescendantSpec, policy: BreedingPolicySpec, parents: Mapping[str, ParentFacts | None]
) -> tuple[list[Refusal], list[str], list[str]]:
    refusals: list[Refusal] = []
    waiting: list[str] = []
    missing: list[str] = []
    for i, ref in enumerate(spec.parents):
        where = f"spec.parents[{i}]"
        facts = parents.get(ref.name)
        if facts is None:
            missing.append(ref.name)
        elif facts.failed is not None:
            refusals.append(
                Refusal(
                    reasons.PARENT_NOT_READY,
                    where,
                    f"parent {ref.name!r} will not become Ready: {facts.failed}",
                )
            )
        elif not facts.ready:
            waiting.append(ref.name)
        elif not facts.intact:
            refusals.append(
                Refusal(
                    reasons.PARENT_TAMPERED,
                    where,
                    f"parent {ref.name!r}: stored files no longer hash to {facts.artifact_id}",
                )
            )
        elif policy.require_signed_parents and not facts.signed:
            refusals.append(
                Refusal(
                    reasons.PARENT_UNSIGNED,
                    where,
                    f"parent {ref.name!r} has no signature by a signer the policy trusts",
                )
            )
        elif ref.artifact_id is not None and ref.artifact_id != facts.artifact_id:
            refusals.append(
                Refusal(
                    reasons.PARENT_PIN_MISMATCH,
                    f"{where}.artifactId",
                    f"parent {ref.name!r} is {facts.artifact_id}, not the pinned {ref.artifact_id}",
                )
            )
    return refusals, waiting, missing


def _compatibility(
    spec: DescendantSpec, policy: BreedingPolicySpec, known: list[ParentFacts]
) -> Iterator[Refusal]:
    rules = policy.compatibility
    must_match: tuple[str, ...] = ()
    if is_weight_space(spec):
        must_match = WEIGHT_SPACE_FIELDS
    elif spec.operator.kind in ("finetune", "lora", "quantize", "prune") or (
        spec.operator.kind in ("ensemble", "router") and rules.same_base_family_for_all
    ):
        must_match = ("base_family",)
    if rules.same_runtime:
        must_match += ("runtime",)
    for attr in must_match:
        values = {p.name: getattr(p.compatibility, attr) for p in known}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{name}={value}" for name, value in sorted(values.items()))
            yield Refusal(
                reasons.INCOMPATIBLE_PARENTS,
                f"spec.compatibility.{_camel(attr)}",
                f"parents differ in {_camel(attr)} ({listed}); {spec.operator.kind} needs it equal",
            )
        elif values and attr != "architecture":
            (value,) = set(values.values())
            declared = getattr(spec.compatibility, attr)
            if declared != value:
                yield Refusal(
                    reasons.INCOMPATIBLE_PARENTS,
                    f"spec.compatibility.{_camel(attr)}",
                    f"declares {declared!r} but the parents have {value!r}",
                )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _licenses(
    spec: DescendantSpec, policy: BreedingPolicySpec, known: list[ParentFacts]
) -> Iterator[Refusal]:
    rules = policy.licenses
    sources: dict[str, set[str]] = {spec.license: {"spec.license"}}
    for parent in known:
        for lic in parent.licenses | {parent.license}:
            sources.setdefault(lic, set()).add(f"parent {parent.name}")
    for i, data in enumerate(spec.data):
        if data.license:
            sources.setdefault(data.license, set()).add(f"spec.data[{i}]")
    if rules.allowed:
        for lic, where in sorted(sources.items()):
            if lic not in rules.allowed:
                yield Refusal(
                    reasons.LICENSE_CONFLICT,
                    "spec.license" if "spec.license" in where else sorted(where)[0],
                    f"licence {lic} ({', '.join(sorted(where))}) is not allowed by the policy",
                )
    forbidden = {frozenset(pair) for pair in rules.incompatible}
    for a, b in combinations(sorted(sources), 2):
        if frozenset((a, b)) in forbidden:
            yield Refusal(
                reasons.LICENSE_CONFLICT,
                "spec.license",
                f"licences {a} ({', '.join(sorted(sources[a]))}) and {b}"
                f" ({', '.join(sorted(sources[b]))}) may not meet in one lineage",
            )


def _restrictions(
    spec: DescendantSpec, policy: BreedingPolicySpec, known: list[ParentFacts]
) -> tuple[list[Refusal], frozenset[str]]:
    rules = policy.data
    refusals = []
    inherited: set[str] = set()
    for i, data in enumerate(spec.data):
        inherited |= set(data.restrictions)
        for bad in sorted(set(data.restrictions) & set(rules.forbidden_restrictions)):
            refusals.append(
                Refusal(
                    reasons.DATA_RESTRICTED,
                    f"spec.data[{i}].restrictions",
                    f"dataset {data.name!r} is restricted {bad!r}, which the policy forbids",
                )
            )
    for parent in known:
        if rules.propagate:
            inherited |= parent.restrictions
        for bad in sorted(parent.restrictions & set(rules.forbidden_restrictions)):
            refusals.append(
                Refusal(
                    reasons.DATA_RESTRICTED,
                    "spec.parents",
                    f"parent {parent.name!r} carries restriction {bad!r}, which the policy forbids",
                )
            )
    return refusals, frozenset(inherited)


def admit(
    spec: DescendantSpec,
    policy: BreedingPolicySpec,
    parents: Mapping[str, ParentFacts | None],
) -> Decision:
    """Decide whether a descendant may be bred under a policy.

    ``parents`` maps each parent name of the spec to what is known of it, or ``None`` when no
    such parent exists. Every refusal is reported, not only the first; what can be judged
    without the missing parents is judged at once.
    """
    refusals = [
        *_operator(spec, policy),
        *_budget(spec, policy),
        *_deadline(spec, policy),
        *_gpu_hours(spec, policy),
        *_scheduling(spec, policy),
    ]
    parent_refusals, waiting, missing = _parents(spec, policy, parents)
    refusals += parent_refusals
    known = [facts for ref in spec.parents if (facts := parents.get(ref.name)) is not None]
    refusals += [*_compatibility(spec, policy, known), *_licenses(spec, policy, known)]
    restricted, inherited = _restrictions(spec, policy, known)
    refusals += restricted
    return Decision(tuple(refusals), tuple(waiting), tuple(missing), inherited)
