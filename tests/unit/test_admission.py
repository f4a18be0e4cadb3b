"""Admission decisions, table-tested on the examples with one change each."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from tests.builders import Body, Parent

from studbook.api import reasons
from studbook.breeding.admission import ParentFacts, admit, gpu_hours_bound, job_deadline

TIES_PARENTS = ("minilm-base", "minilm-sentiment", "minilm-topic")


def _facts(*parents: Parent) -> dict[str, ParentFacts | None]:
    return {p.fields["name"]: p.build() for p in parents}


def _ties_parents() -> list[Parent]:
    return [Parent(name) for name in TIES_PARENTS]


@dataclass
class Case:
    id: str
    body: Body
    parents: dict[str, ParentFacts | None]
    reason: str | None
    field: str = ""
    words: str = ""
    policy: Body | None = None


def _cases() -> list[Case]:
    ties = _ties_parents
    return [
        Case("ties-admitted", Body.of("ties-merge"), _facts(*ties()), None),
        Case("lora-admitted", Body.of("lora-specialist"), _facts(Parent("minilm-base")), None),
        Case("founder-admitted", Body.of("founder-import"), {}, None),
        Case(
            "operator-forbidden",
            Body.of("ties-merge"),
            _facts(*ties()),
            reasons.OPERATOR_FORBIDDEN,
            "spec.operator.kind",
            "not allowed by the policy",
            Body.of("policy").set("spec.allowedOperators", ["import", "lora"]),
        ),
        Case(
            "lora-rank-over-budget",
            Body.of("lora-specialist").set("spec.operator.lora.rank", 128),
            _facts(Parent("minilm-base")),
            reasons.BUDGET_EXCEEDED,
            "spec.operator.lora.rank",
            "LoRA rank 128 exceeds the budget of 64",
        ),
        Case(
            "learning-rate-over-budget",
            Body.of("lora-specialist").set("spec.operator.lora.learningRate", 0.01),
            _facts(Parent("minilm-base")),
            reasons.BUDGET_EXCEEDED,
            "spec.operator.lora.learningRate",
            "exceeds the budget",
        ),
        Case(
            "merge-weight-over-budget",
            Body.of("ties-merge").set("spec.operator.merge.overrides.0.weights.1.weight", 3.0),
            _facts(*ties()),
            reasons.BUDGET_EXCEEDED,
            "spec.operator.merge.overrides[0].weights[1].weight",
            "merge weight 3",
        ),
        Case(
            "gpus-over-budget",
            Body.of("lora-specialist").set("spec.resources.gpus", 16),
            _facts(Parent("minilm-base")),
            reasons.BUDGET_EXCEEDED,
            "spec.resources.gpus",
            "GPUs 16",
        ),
        Case(
            "gpu-hours-over-budget",
            # 1 GPU x 10 h x (breed + evaluate) x (1 + backoffLimit 2) = 60 > 48.
            Body.of("lora-specialist").set("spec.resources.activeDeadlineSeconds", 36_000),
            _facts(Parent("minilm-base")),
            reasons.BUDGET_EXCEEDED,
            "spec.resources.activeDeadlineSeconds",
            "GPU hours 60 exceed the budget of 48",
        ),
        Case(
            "gpu-hours-at-the-policy-deadline",
            # No deadline of its own: the policy's maxJobSeconds (a day) bounds each attempt,
            # 1 GPU x 24 h x 2 GPU steps x 3 attempts = 144 > 48.
            Body.of("lora-specialist").set("spec.resources.activeDeadlineSeconds", None),
            _facts(Parent("minilm-base")),
            reasons.BUDGET_EXCEEDED,
            "spec.resources.activeDeadlineSeconds",
            "GPU hours 144 exceed the budget of 48: 1 GPU(s) for up to 86400s (the policy's",
        ),
        Case(
            "deadline-over-policy",
            Body.of("ties-merge").set("spec.resources.activeDeadlineSeconds", 100_000),
            _facts(*ties()),
            reasons.BUDGET_EXCEEDED,
            "spec.resources.activeDeadlineSeconds",
            "activeDeadlineSeconds 100000 exceeds the policy's maxJobSeconds of 86400",
        ),
        Case(
            "gpu-hours-within-budget-with-fewer-retries",
            Body.of("lora-specialist")
            .set("spec.resources.activeDeadlineSeconds", 36_000)
            .set("spec.resources.backoffLimit", 1),
            _facts(Parent("minilm-base")),
            None,
        ),
        Case(
            "gpu-hours-unbounded-without-policy-limit",
            Body.of("lora-specialist").set("spec.resources.activeDeadlineSeconds", None),
            _facts(Parent("minilm-base")),
            None,
            policy=Body.of("policy").set("spec.mutationBudget.maxGpuHours", None),
        ),
        Case(
            "parent-failed",
            Body.of("lora-specialist"),
            _facts(Parent("minilm-base").with_(ready=False, failed="Rejected: licence")),
            reasons.PARENT_NOT_READY,
            "spec.parents[0]",
            "will not become Ready: Rejected: licence",
        ),
        Case(
            "parent-unsigned",
            Body.of("ties-merge"),
            _facts(*ties()[:2], Parent("minilm-topic").with_(signed=False)),
            reasons.PARENT_UNSIGNED,
            "spec.parents[2]",
            "no signature by a signer the policy trusts",
        ),
        Case(
            "parent-tampered",
            Body.of("ties-merge"),
            _facts(Parent("minilm-base").with_(intact=False), *ties()[1:]),
            reasons.PARENT_TAMPERED,
            "spec.parents[0]",
            "no longer hash",
        ),
        Case(
            "parent-pin-mismatch",
            Body.of("lora-specialist").set("spec.parents.0.artifactId", "sha256:" + "ab" * 32),
            _facts(Parent("minilm-base")),
            reasons.PARENT_PIN_MISMATCH,
            "spec.parents[0].artifactId",
            "not the pinned",
        ),
        Case(
            "merge-different-tokenizers",
            Body.of("ties-merge"),
            _facts(*ties()[:2], Parent("minilm-topic").compatible(tokenizerId="gpt2-bpe-50257")),
            reasons.INCOMPATIBLE_PARENTS,
            "spec.compatibility.tokenizerId",
            "parents differ in tokenizerId",
        ),
        Case(
            "merge-different-architectures",
            Body.of("ties-merge"),
            _facts(*ties()[:2], Parent("minilm-topic").compatible(architecture="LlamaForCausalLM")),
            reasons.INCOMPATIBLE_PARENTS,
            "spec.compatibility.architecture",
            "merge needs it equal",
        ),
        Case(
            "lora-declares-other-family",
            Body.of("lora-specialist").set("spec.compatibility.baseFamily", "llama-3.1-8b"),
            _facts(Parent("minilm-base")),
            reasons.INCOMPATIBLE_PARENTS,
            "spec.compatibility.baseFamily",
            "declares 'llama-3.1-8b' but the parents have 'minilm-l6'",
        ),
        Case(
            "licence-conflict-between-parents",
            Body.of("ties-merge"),
            _facts(*ties()[:2], Parent("minilm-topic").with_(license="CC-BY-SA-4.0")),
            reasons.LICENSE_CONFLICT,
            "spec.license",
            "may not meet in one lineage",
        ),
        Case(
            "licence-not-allowed",
            Body.of("lora-specialist").set("spec.license", "LicenseRef-Proprietary"),
            _facts(Parent("minilm-base")),
            reasons.LICENSE_CONFLICT,
            "spec.license",
            "is not allowed by the policy",
        ),
        Case(
            "restricted-data",
            Body.of("lora-specialist").set("spec.data.0.restrictions", ["pii-unredacted"]),
            _facts(Parent("minilm-base")),
            reasons.DATA_RESTRICTED,
            "spec.data[0].restrictions",
            "'pii-unredacted', which the policy forbids",
        ),
        Case(
            "restriction-inherited-from-parent",
            Body.of("quantization"),
            _facts(Parent("minilm-sentiment").with_(restrictions=frozenset({"no-derivatives"}))),
            reasons.DATA_RESTRICTED,
            "spec.parents",
            "carries restriction 'no-derivatives'",
        ),
        *_scheduling_cases(),
    ]


LOCAL_RUNNER = ("studbook.dev/local-runner", "true")
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _scheduling_cases() -> list[Case]:
    """``lora-specialist`` asks for gpuType NVIDIA-L4, the nvidia.com/gpu toleration and
    priority class batch-low; ``examples/policy.yaml`` lists exactly those and A100s."""
    lora = Body.of("lora-specialist")
    base = _facts(Parent("minilm-base"))
    nothing_listed = Body.of("policy").set("spec.scheduling", {})

    def lora_with(path: str, value: object) -> Body:
        return Body.of("lora-specialist").set(f"spec.resources.{path}", value)

    def tolerating(*allowed: dict[str, object]) -> Body:
        return Body.of("policy").set("spec.scheduling.allowedTolerations", list(allowed))

    return [
        Case(
            "scheduling-allowed-node-selector",
            lora_with("nodeSelector", {LOCAL_RUNNER[0]: LOCAL_RUNNER[1]}),
            base,
            None,
            policy=Body.of("policy").set(
                "spec.scheduling.allowedNodeSelector",
                {"nvidia.com/gpu.product": ["NVIDIA-L4"], LOCAL_RUNNER[0]: [LOCAL_RUNNER[1]]},
            ),
        ),
        Case(
            "scheduling-node-selector-key-not-listed",
            lora_with("nodeSelector", {"kubernetes.io/hostname": "control-plane-1"}),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.nodeSelector[kubernetes.io/hostname]",
            "node label 'kubernetes.io/hostname' is not one the policy lets descendants select on",
        ),
        Case(
            "scheduling-gpu-type-not-listed",
            lora_with("gpuType", "NVIDIA-H100-80GB-HBM3"),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.gpuType",
            "nvidia.com/gpu.product='NVIDIA-H100-80GB-HBM3' is not allowed",
        ),
        Case(
            "scheduling-gpu-type-as-node-selector-value-not-listed",
            lora_with("nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.nodeSelector[nvidia.com/gpu.product]",
            "allowed values: NVIDIA-L4, NVIDIA-A100-SXM4-80GB",
        ),
        Case(
            "scheduling-toleration-of-every-taint",
            lora_with("tolerations", [{"operator": "Exists"}]),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[0]",
            "not covered by one the policy allows",
        ),
        Case(
            "scheduling-toleration-of-another-key",
            lora_with(
                "tolerations",
                [GPU_TAINT, {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
            ),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[1]",
            "node-role.kubernetes.io/control-plane",
        ),
        Case(
            "scheduling-toleration-of-every-effect-under-one-effect",
            lora_with("tolerations", [{**GPU_TAINT, "effect": None}]),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[0]",
            "not covered",
        ),
        Case(
            "scheduling-toleration-equal-value-covered-by-exists",
            lora_with("tolerations", [{**GPU_TAINT, "operator": "Equal", "value": "present"}]),
            base,
            None,
        ),
        Case(
            "scheduling-toleration-exists-under-equal",
            lora_with("tolerations", [{"key": "pool", "operator": "Exists"}]),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[0]",
            "not covered",
            tolerating({"key": "pool", "operator": "Equal", "value": "train"}),
        ),
        Case(
            "scheduling-toleration-of-another-value",
            lora_with("tolerations", [{"key": "pool", "value": "serving"}]),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[0]",
            "not covered",
            tolerating({"key": "pool", "operator": "Equal", "value": "train"}),
        ),
        Case(
            "scheduling-toleration-within-no-execute-seconds",
            lora_with(
                "tolerations", [{"key": "spot", "effect": "NoExecute", "tolerationSeconds": 60}]
            ),
            base,
            None,
            policy=tolerating({"key": "spot", "tolerationSeconds": 300}),
        ),
        Case(
            "scheduling-toleration-of-no-execute-forever-under-seconds",
            lora_with("tolerations", [{"key": "spot", "effect": "NoExecute"}]),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[0]",
            "not covered",
            tolerating({"key": "spot", "tolerationSeconds": 300}),
        ),
        Case(
            "scheduling-priority-class-not-listed",
            lora_with("priorityClassName", "system-cluster-critical"),
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.priorityClassName",
            "'system-cluster-critical' is not allowed by the policy (allowed: batch-low)",
        ),
        Case(
            "scheduling-nothing-listed-refuses-gpu-type",
            lora,
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.gpuType",
            "(allowed: none)",
            nothing_listed,
        ),
        Case(
            "scheduling-nothing-listed-refuses-toleration",
            lora,
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.tolerations[0]",
            "not covered",
            nothing_listed,
        ),
        Case(
            "scheduling-nothing-listed-refuses-priority-class",
            lora,
            base,
            reasons.SCHEDULING_FORBIDDEN,
            "spec.resources.priorityClassName",
            "(allowed: none)",
            nothing_listed,
        ),
        Case(
            "scheduling-nothing-asked-nothing-listed",
            Body.of("ties-merge"),
            _facts(*_ties_parents()),
            None,
            policy=nothing_listed,
        ),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_admission(case: Case) -> None:
    policy = (case.policy or Body.of("policy")).policy().spec
    decision = admit(case.body.descendant().spec, policy, case.parents)
    if case.reason is None:
        assert decision.admitted, [str(r) for r in decision.refusals]
        return
    assert not decision.admitted
    assert any(
        r.reason == case.reason and r.field == case.field and case.words in r.message
        for r in decision.refusals
    ), [str(r) for r in decision.refusals]


def test_parent_not_ready_is_waited_for_not_refused() -> None:
    parents = _facts(
        Parent("minilm-base"), Parent("minilm-sentiment").with_(ready=False), Parent("minilm-topic")
    )
    decision = admit(
        Body.of("ties-merge").descendant().spec, Body.of("policy").policy().spec, parents
    )
    assert decision.refusals == ()
    assert decision.waiting_for == ("minilm-sentiment",)
    assert not decision.admitted


def test_missing_parent_is_not_a_refusal_but_forbidden_operator_is_judged_at_once() -> None:
    parents = {**_facts(*_ties_parents()), "minilm-topic": None}
    policy = Body.of("policy").set("spec.allowedOperators", ["lora"]).policy().spec
    decision = admit(Body.of("ties-merge").descendant().spec, policy, parents)
    assert decision.missing == ("minilm-topic",)
    assert [r.reason for r in decision.refusals] == [reasons.OPERATOR_FORBIDDEN]


def test_unsigned_parent_admitted_when_policy_does_not_require_signatures() -> None:
    policy = Body.of("policy").set("spec.requireSignedParents", False).policy().spec
    parents = _facts(Parent("minilm-base").with_(signed=False))
    assert admit(Body.of("lora-specialist").descendant().spec, policy, parents).admitted


def test_every_refusal_is_reported_and_restrictions_inherited() -> None:
    body = (
        Body.of("lora-specialist")
        .set("spec.operator.lora.rank", 512)
        .set("spec.operator.lora.steps", 1_000_000)
        .set("spec.data.0.restrictions", ["research-only"])
    )
    parents = _facts(Parent("minilm-base").with_(restrictions=frozenset({"eu-only"})))
    decision = admit(body.descendant().spec, Body.of("policy").policy().spec, parents)
    fields = {r.field for r in decision.refusals}
    assert {"spec.operator.lora.rank", "spec.operator.lora.steps"} <= fields
    assert decision.restrictions == {"research-only", "eu-only"}


def test_gpu_hours_bound_counts_every_gpu_job_attempt() -> None:
    policy = Body.of("policy").policy().spec
    spec = Body.of("lora-specialist").descendant().spec
    # 1 GPU x 4 h x 2 GPU steps x 3 attempts.
    assert job_deadline(spec, policy) == 14_400
    assert gpu_hours_bound(spec, job_deadline(spec, policy)) == 24.0
    cpu_only = Body.of("ties-merge").descendant().spec
    assert gpu_hours_bound(cpu_only, job_deadline(cpu_only, policy)) == 0.0
    # Without its own deadline a Job gets the policy's, or the default policy's.
    own = Body.of("lora-specialist").set("spec.resources.activeDeadlineSeconds", None)
    assert job_deadline(own.descendant().spec, policy) == policy.mutation_budget.max_job_seconds
    assert job_deadline(own.descendant().spec, None) == 86_400
