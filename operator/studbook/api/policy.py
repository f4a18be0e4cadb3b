"""``BreedingPolicy``: the authority that admits descendants and gates their release."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from pydantic import Field

from studbook.api.base import ApiModel, OneOf, Rule
from studbook.api.common import (
    Conditions,
    Duration,
    Fraction,
    Name,
    OperatorKind,
    RiskTier,
    ShortText,
    Spdx,
    Toleration,
)
from studbook.api.resource import CrdInfo, PrinterColumn, Resource
from studbook.api.suite import bounded_map_rule


class MutationBudget(ApiModel):
    """How far one descendant may move from its parents, and what breeding it may cost."""

    max_parents: Annotated[int, Field(ge=1, le=32)] = 8
    """Most parents one descendant may have."""
    max_lora_rank: Annotated[int, Field(ge=1, le=1024)] = 64
    """Largest LoRA rank."""
    max_steps: Annotated[int, Field(ge=1)] = 100_000
    """Most optimizer steps of finetune, lora and distill."""
    max_learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    """Largest learning rate."""
    max_prune_sparsity: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """Largest pruning sparsity."""
    max_merge_weight: Annotated[float, Field(gt=0.0, le=10.0)] = 2.0
    """Largest absolute merge coefficient."""
    max_gpus: Annotated[int, Field(ge=0, le=64)] = 8
    """Most GPUs one Job may ask for."""
    max_gpu_hours: Annotated[float, Field(ge=0.0)] | None = None
    """Most GPU hours one descendant may spend. Enforced at admission against what the
    descendant's resources bound: ``gpus`` times its Jobs' deadline (``activeDeadlineSeconds``,
    or else ``maxJobSeconds``) times the GPU Jobs it may run (breed and evaluate, each up to
    ``1 + backoffLimit`` attempts). At run time Kubernetes ends each Job attempt at its
    deadline."""
    max_job_seconds: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    """Longest one Job attempt may run, in seconds (default a day). Every Job gets it as its
    ``activeDeadlineSeconds`` unless the descendant asks for less; asking for more is refused.
    A Job that reaches it fails, saying so."""


class CompatibilityRules(ApiModel):
    """What parents must share beyond what weight-space operators always need.

    Merges and adapter composition always need equal base family, tokenizer and architecture
    shapes; these rules can demand more.
    """

    same_base_family_for_all: bool = False
    """Also require one base family for ensembles and routers."""
    same_runtime: bool = True
    """Require parents built for one runtime."""


class LicenseRules(ApiModel):
    """Which licences may be bred, and which may not meet in one descendant."""

    allowed: Annotated[list[Spdx], Field(max_length=64)] = []
    """SPDX identifiers allowed for parents, data and descendants; empty allows any."""
    incompatible: Annotated[
        list[Annotated[list[Spdx], Field(min_length=2, max_length=2)]], Field(max_length=64)
    ] = []
    """Pairs of licences that may not meet in one lineage."""


class DataRules(ApiModel):
    """How data restrictions constrain breeding."""

    forbidden_restrictions: Annotated[
        list[Annotated[str, Field(max_length=63)]], Field(max_length=32)
    ] = []
    """Restrictions that bar a dataset (or a parent that inherited it) from breeding here."""
    propagate: bool = True
    """Descendants inherit the restrictions of their parents' data."""


LABEL_GPU_PRODUCT: Final = "nvidia.com/gpu.product"
"""The node label a descendant's ``resources.gpuType`` selects on."""

LabelValue = Annotated[str, Field(max_length=63)]


class SchedulingRules(ApiModel):
    """What a descendant's ``resources`` may ask of the scheduler for its untrusted pods.

    ``nodeSelector``, ``gpuType``, ``tolerations`` and ``priorityClassName`` decide which nodes
    run tenant code and whom it may preempt, so each must come from these lists; anything else
    is refused at admission (``SchedulingForbidden``). Empty lists, the default, allow none of
    them. Placement a cluster admin applies outside the Descendant (a Kueue ResourceFlavor, a
    namespace's default node selector) is not a tenant's request and is not judged here.
    """

    allowed_node_selector: Annotated[
        dict[str, Annotated[list[LabelValue], Field(min_length=1, max_length=64)]],
        Field(max_length=32),
    ] = {}
    """Node label keys a descendant may select on, each with the values it may ask for; a key
    not listed, or a value not listed under its key, is refused. ``gpuType`` asks for the label
    ``nvidia.com/gpu.product``: list the GPU products a descendant may ask for under that key."""
    allowed_tolerations: Annotated[list[Toleration], Field(max_length=32)] = []
    """Tolerations a descendant may carry. Each of the descendant's must be covered by one listed
    here, that is tolerate no taint the listed one does not: the same key unless the listed one
    has none (it then covers every key); the same value, with operator ``Equal``, unless the
    listed one's operator is ``Exists``; the same effect unless the listed one names none; and
    where the descendant's may tolerate ``NoExecute`` taints and the listed one sets
    ``tolerationSeconds``, at most that many seconds."""
    allowed_priority_class_names: Annotated[list[Name], Field(max_length=32)] = []
    """PriorityClasses a descendant's pods may run at; a descendant that names none gets the
    cluster's default."""


class KeySigner(ApiModel):
    """A signer trusted by its public key."""

    public_key: Annotated[str, Field(min_length=1, max_length=8192)]
    """The PEM-encoded public key (ECDSA P-256, P-384 or P-521)."""


class CertificateSigner(ApiModel):
    """A signer trusted by a certificate chain to our CA and a SAN pattern."""

    ca_bundle: Annotated[str, Field(min_length=1, max_length=65536)]
    """PEM certificates of the trusted CA (root first)."""
    san_pattern: Annotated[str, Field(min_length=1, max_length=512)]
    """A regular expression the signing certificate's SAN must match in full."""


class KeylessSigner(ApiModel):
    """A sigstore keyless identity: the OIDC subject and issuer in the Fulcio certificate."""

    identity: Annotated[str, Field(min_length=1, max_length=512)]
    """The signer identity, for example
    ``https://kubernetes.io/namespaces/studbook/serviceaccounts/signer``."""
    issuer: Annotated[str, Field(min_length=1, max_length=512)]
    """The OIDC issuer that vouched for it."""
    trust_config_map: Name
    """The ConfigMap, in the policy's namespace, whose key ``trust_config.json`` holds the sigstore
    ClientTrustConfig (Fulcio roots, transparency logs) signatures are verified against."""


class TrustedSigner(OneOf):
    """A signer whose signatures admit a parent; ``kind`` names how it is trusted."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    """A name for status messages."""
    kind: Literal["key", "certificate", "keyless"]
    """How the signer is identified."""
    key: KeySigner | None = None
    """A public key."""
    certificate: CertificateSigner | None = None
    """A CA and SAN pattern."""
    keyless: KeylessSigner | None = None
    """A sigstore keyless identity."""

    @classmethod
    def _members(cls) -> dict[str, str]:
        return {wire: attr for wire, attr in super()._members().items() if wire != "name"}


class EvaluationGates(ApiModel):
    """What a scorecard must show before a descendant becomes a candidate."""

    min_metrics: Annotated[dict[str, float], Field(max_length=32)] = {}
    """Lowest allowed value of metrics where higher is better, by name (``accuracy``) or by
    ``<dataset>/<metric>``; within [0, 1] for accuracy, macro_f1, exact_match and ece."""
    max_metrics: Annotated[dict[str, float], Field(max_length=32)] = {}
    """Highest allowed value of metrics where lower is better (perplexity, latency), by name or
    by ``<dataset>/<metric>``; within [0, 1] for accuracy, macro_f1, exact_match and ece, and
    not below the same metric's ``minMetrics``."""
    min_net_gain: float | None = None
    """Least objective gain over the best parent."""
    max_niche_regression: Fraction | None = None
    """Largest drop on any parent's niche probe, within [0, 1]."""
    max_calibration_error: Fraction | None = None
    """Largest expected calibration error, within [0, 1]."""

    rules = (
        bounded_map_rule("minMetrics", "min_metrics"),
        bounded_map_rule("maxMetrics", "max_metrics"),
        Rule(
            cel="!has(self.minMetrics) || !has(self.maxMetrics) || self.minMetrics.all(k,"
            " !(k in self.maxMetrics) || self.minMetrics[k] <= self.maxMetrics[k])",
            message="a metric's minMetrics must not exceed its maxMetrics: no model could pass",
            check=lambda g: all(
                v <= g.max_metrics[k] for k, v in g.min_metrics.items() if k in g.max_metrics
            ),
            field_path=".minMetrics",
        ),
    )


class TierGate(ApiModel):
    """What releasing a model of one risk tier requires."""

    tier: RiskTier
    """The risk tier."""
    required_approvals: Annotated[int, Field(ge=0, le=16)] = 0
    """Approvals a Promotion must carry."""
    min_shadow_duration: Duration | None = None
    """Least time in shadow before canary."""
    max_stage: Literal["shadow", "canary", "champion"] = "champion"
    """The furthest stage a model of this tier may reach."""


class PromotionGates(ApiModel):
    """What a Promotion must show at each step."""

    require_pass_verdict: bool = True
    """The scorecard verdict must be ``pass``."""
    tiers: Annotated[list[TierGate], Field(max_length=4)] = []
    """Per-tier requirements."""

    rules = (
        Rule(
            cel="!has(self.tiers) || self.tiers.all(a, self.tiers.exists_one(b, b.tier == a.tier))",
            message="each risk tier may appear once in tiers",
            check=lambda g: len({t.tier for t in g.tiers}) == len(g.tiers),
            field_path=".tiers",
        ),
    )


class BreedingPolicySpec(ApiModel):
    """The rules every descendant that names this policy is admitted and released under."""

    allowed_operators: Annotated[list[OperatorKind], Field(min_length=1, max_length=9)]
    """Operators descendants may use."""
    mutation_budget: MutationBudget = MutationBudget()
    """Bounds on one descendant's variation and cost."""
    compatibility: CompatibilityRules = CompatibilityRules()
    """What parents must share."""
    licenses: LicenseRules = LicenseRules()
    """Licence rules."""
    data: DataRules = DataRules()
    """Data restriction rules."""
    scheduling: SchedulingRules = SchedulingRules()
    """Node selectors, tolerations and priority classes descendants may ask for; none by
    default."""
    trusted_signers: Annotated[list[TrustedSigner], Field(min_length=1, max_length=16)]
    """Signers whose signatures admit a parent."""
    evaluation_gates: EvaluationGates = EvaluationGates()
    """What a scorecard must show."""
    promotion_gates: PromotionGates = PromotionGates()
    """What a Promotion must show."""
    require_signed_parents: bool = True
    """Refuse parents without a verifying signature. Only a laboratory turns this off."""
    owner: ShortText | None = None
    """Who answers for this policy."""

    rules = (
        Rule(
            cel="self.allowedOperators.all(a, self.allowedOperators.exists_one(b, b == a))",
            message="allowedOperators must not repeat an operator",
            check=lambda s: len(set(s.allowed_operators)) == len(s.allowed_operators),
            field_path=".allowedOperators",
        ),
    )


class BreedingPolicyStatus(ApiModel):
    """Whether the policy is valid and in force."""

    phase: Literal["Valid", "Invalid"] | None = None
    """Whether the operator accepted the policy."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """Why it is invalid."""
    conditions: Conditions = []
    """Valid."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""


class BreedingPolicy(Resource):
    """The authority: allowed operators, budgets, compatibility, licences, signers and gates."""

    kind: Literal["BreedingPolicy"] = "BreedingPolicy"
    """The resource kind."""
    spec: BreedingPolicySpec
    """The rules."""
    status: BreedingPolicyStatus | None = None
    """Whether they are in force."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        plural="breedingpolicies",
        short_names=("bpol",),
        printer_columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Operators", ".spec.allowedOperators", priority=1),
        ),
    )
