"""The breeding operators and their typed configurations.

A descendant's ``spec.operator`` is a :class:`OperatorSpec`: ``kind`` names the operator and the
member of the same name holds its configuration.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from studbook.api.base import ApiModel, OneOf, Rule
from studbook.api.common import NO_PVC_MESSAGE, Digest, Fraction, Name, OperatorKind, ShortText

Names = Annotated[list[Name], Field(max_length=32)]
ModuleNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=64)
]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
Steps = Annotated[int, Field(ge=1, le=10_000_000)]
BatchSize = Annotated[int, Field(ge=1, le=65536)]

Task = Literal["sequence-classification", "causal-lm"]
"""What the model does: classify sequences, or predict the next token."""


class ImportConfig(ApiModel):
    """Bring a founder in from outside: the model at ``uri`` must hash to ``digest``."""

    uri: ShortText
    """Where the founder lives: a local path or an fsspec URI (``file://``, ``s3://``, ``gs://``)."""
    digest: Digest
    """The expected Studbook artifact id of the founder's files; a mismatch refuses the import."""
    format: Literal["safetensors"] = "safetensors"
    """The weight format of the source; only ``safetensors`` is imported (PyTorch pickles and
    GGUF files are not)."""

    rules = (
        Rule(
            cel="!self.uri.startsWith('pvc://')",
            message=NO_PVC_MESSAGE,
            check=lambda c: not c.uri.startswith("pvc://"),
            field_path=".uri",
        ),
    )


class TrainingConfig(ApiModel):
    """What every gradient-based operator shares."""

    task: Task
    """The training objective."""
    datasets: Annotated[Names, Field(min_length=1)]
    """Names of entries in ``spec.data`` to train on."""
    steps: Steps
    """Optimizer steps."""
    learning_rate: LearningRate
    """Peak learning rate."""
    batch_size: BatchSize = 16
    """Examples per optimizer step."""
    max_seq_length: Annotated[int, Field(ge=8, le=1_048_576)] = 256
    """Longer examples are truncated."""
    warmup_ratio: Fraction = 0.0
    """Fraction of steps spent warming the learning rate up."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Decoupled weight decay."""
    num_labels: Annotated[int, Field(ge=2, le=100_000)] | None = None
    """Classes of a sequence-classification head; required for that task."""
    seed: Seed = 0
    """Seed of data order, dropout and initialisation."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.task != 'sequence-classification' || has(self.numLabels)",
            message="numLabels is required for task sequence-classification",
            check=lambda c: c.task != "sequence-classification" or c.num_labels is not None,
            field_path=".numLabels",
        ),
    )


class FinetuneConfig(TrainingConfig):
    """Full fine-tuning of every (or every unfrozen) weight of the parent."""

    freeze: ModuleNames = []
    """Glob patterns of parameter names kept frozen, for example ``bert.embeddings.*``."""


class AdapterComposition(ApiModel):
    """Combine the parents' LoRA adapters on their shared base instead of training one."""

    method: Literal["linear", "cat", "svd"]
    """``linear`` sums scaled A and B; ``cat`` concatenates ranks; ``svd`` re-factorises the
    weighted sum of deltas to ``rank``."""
    weights: Annotated[
        list[Annotated[float, Field(ge=-10.0, le=10.0)]], Field(min_length=1, max_length=32)
    ]
    """One weight per parent, in parent order."""


class LoraConfig(TrainingConfig):
    """A LoRA adapter (peft) trained on the parent, or composed from the parents' adapters."""

    rank: Annotated[int, Field(ge=1, le=1024)]
    """The adapter rank r."""
    alpha: Annotated[float, Field(gt=0.0, le=4096.0)]
    """The LoRA scaling numerator: deltas are scaled by alpha / r."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout on the adapter input."""
    target_modules: Annotated[ModuleNames, Field(min_length=1)]
    """Module names (or suffixes) that receive adapters, for example ``query`` and ``value``."""
    compose: AdapterComposition | None = None
    """When set, the parents' adapters are combined instead of training a new one."""
    merge_into_base: bool = False
    """Fold the adapter into the base weights, producing a full model instead of an adapter."""


class AgreementFilter(ApiModel):
    """Which teacher labels a distillation accepts."""

    min_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Fraction of teachers that must give the same label."""
    min_confidence: Fraction = 0.7
    """The accepted label's mean teacher probability must reach this."""
    keep_disagreements: Fraction = 0.1
    """Fraction of refused (disagreement) examples kept with soft labels, because uncertainty
    boundaries are part of the capability."""


class StudentSpec(ApiModel):
    """The student a distillation trains."""

    parent: Name | None = None
    """The parent whose weights initialise the student; the other parents are teachers. Empty:
    the student is built fresh from the teachers' architecture with ``numLayers`` layers."""
    num_layers: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Keep this many evenly spaced transformer layers of the student."""


class DistillConfig(TrainingConfig):
    """Distillation: a student learns the labels its teachers agree on.

    The teachers (the parents) label seed inputs independently; the student learns the accepted
    labels from their logits with temperature.
    """

    student: StudentSpec = StudentSpec()
    """The student."""
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = 2.0
    """Softmax temperature of the soft targets."""
    alpha: Fraction = 0.5
    """Weight of the soft-target loss against the hard-label loss."""
    agreement: AgreementFilter = AgreementFilter()
    """Which teacher outputs become training labels."""

    rules = (
        *TrainingConfig.rules,
        Rule(
            cel="self.task == 'sequence-classification'",
            message="distill supports task sequence-classification only",
            check=lambda c: c.task == "sequence-classification",
            field_path=".task",
        ),
    )


class QuantizeConfig(ApiModel):
    """Lower-precision weights for cheaper serving."""

    scheme: Literal["int8-weight-only", "int4-weight-only"]
    """Weight-only integer quantization of every linear and embedding layer not skipped;
    activations stay in floating point. ``int8-weight-only``: symmetric int8 (scale
    ``max|w| / 127``), granularity ``per-channel``; the artifact's
    ``compatibility.quantization`` is ``int8``. ``int4-weight-only``: asymmetric 4-bit (scale
    ``(max - min) / 15`` and an integer zero point, the range always holding 0), two values per
    byte, granularity ``per-group``; the artifact's ``compatibility.quantization`` is
    ``int4``."""
    granularity: Literal["per-channel", "per-group"] = "per-channel"
    """What one scale covers: ``per-channel``, one output channel of a linear layer (one row of
    an embedding table), with ``int8-weight-only`` only; ``per-group``, ``groupSize``
    consecutive input columns of one output channel, with ``int4-weight-only`` only."""
    group_size: Annotated[int, Field(ge=8, le=4096)] | None = None
    """Input columns per scale with granularity ``per-group`` (128 is the usual choice). A
    width it does not divide ends each row with one shorter group."""
    skip_modules: ModuleNames = []
    """Glob patterns of modules kept in full precision, for example a classifier head."""
    calibration_dataset: Name | None = None
    """An entry in ``spec.data`` used to measure the quantization error."""

    rules = (
        Rule(
            cel="(self.scheme == 'int4-weight-only') == (self.granularity == 'per-group')",
            message="int8-weight-only is quantized per-channel and int4-weight-only per-group",
            check=lambda c: (c.scheme == "int4-weight-only") == (c.granularity == "per-group"),
            field_path=".granularity",
        ),
        Rule(
            cel="(self.granularity == 'per-group') == has(self.groupSize)",
            message="groupSize is required with granularity per-group, and only then",
            check=lambda c: (c.granularity == "per-group") == (c.group_size is not None),
            field_path=".groupSize",
        ),
    )


class PruneConfig(ApiModel):
    """Remove weights (unstructured) or whole heads and FFN rows (structured)."""

    method: Literal["magnitude", "attention-heads", "ffn-rows"]
    """Which weights go: the smallest by magnitude, whole attention heads, or FFN rows."""
    target_sparsity: Annotated[float, Field(gt=0.0, lt=1.0)]
    """Fraction of the pruned weights removed."""
    scope: Literal["global", "per-layer"] = "per-layer"
    """Rank weights across the whole model or within each layer."""
    skip_modules: ModuleNames = []
    """Glob patterns of modules never pruned."""


MergeMethod = Literal[
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "model_stock",
]
"""Weight-merge methods. All but ``slerp`` and ``model_stock`` are instances of one general
task-arithmetic method with sparsification and consensus options."""

METHODS_WITH_BASE: frozenset[str] = frozenset(
    {
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "model_stock",
    }
)
"""Methods that work on task vectors (differences to a base) and so need ``base``."""

SPARSIFYING_METHODS: frozenset[str] = frozenset(
    {"ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"}
)
"""Methods that keep a fraction of each task vector and so need ``parameters.density``."""

UNWEIGHTED_METHODS: frozenset[str] = frozenset({"slerp", "model_stock"})
"""Methods that take no per-parent weights: SLERP reads only ``t``, model stock nothing."""


class ParentWeight(ApiModel):
    """A coefficient of one parent."""

    parent: Name
    """The parent, by its name in ``spec.parents``."""
    weight: Annotated[float, Field(ge=-10.0, le=10.0)]
    """The parent's coefficient."""


PARENTS_ONCE = Rule(
    cel="!has(self.weights)"
    " || self.weights.all(a, self.weights.exists_one(b, b.parent == a.parent))",
    message="weights must not list a parent twice",
    check=lambda c: len({w.parent for w in c.weights or []}) == len(c.weights or []),
    field_path=".weights",
)
"""Each parent weighs in once: two weights for one parent would leave which one counts open."""


class MergeParameters(ApiModel):
    """Method parameters; each method reads those it needs."""

    density: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Fraction of each task vector kept (TIES trim, DARE keep probability, breadcrumbs)."""
    gamma: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    """Breadcrumbs: fraction of the largest-magnitude entries also removed as outliers."""
    t: Fraction | None = None
    """SLERP: interpolation from the first parent (0) to the second (1)."""
    scale: Annotated[float, Field(ge=-10.0, le=10.0)] | None = None
    """Task arithmetic: scaling of the summed task vectors (lambda)."""
    normalize: bool | None = None
    """Divide by the sum of weights."""


class MergeOverride(ApiModel):
    """Coefficients for the tensors whose names match a filter; the first matching override wins."""

    tensors: Annotated[str, Field(min_length=1, max_length=256)]
    """A glob over tensor names, for example ``model.layers.1[0-5].*`` or ``*.mlp.*``."""
    weights: Annotated[list[ParentWeight], Field(max_length=32)] | None = None
    """Per-parent weights for these tensors."""
    parameters: MergeParameters | None = None
    """Method parameters for these tensors."""

    rules = (PARENTS_ONCE,)


class MergeConfig(ApiModel):
    """A weight-space merge of compatible parents."""

    method: MergeMethod
    """The merge method."""
    base: Name | None = None
    """The parent task vectors are taken against; required by task-vector methods."""
    weights: Annotated[list[ParentWeight], Field(max_length=32)] = []
    """Per-parent weights; parents left out weigh 1 (linear: 1/n)."""
    parameters: MergeParameters = MergeParameters()
    """Method parameters for every tensor without an override."""
    overrides: Annotated[list[MergeOverride], Field(max_length=64)] = []
    """Per-layer or per-tensor-filter coefficients."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """The dtype of the merged weights."""
    seed: Seed = 0
    """Seed of random sparsification (DARE)."""

    rules = (
        PARENTS_ONCE,
        Rule(
            cel="!(self.method in " + str(sorted(METHODS_WITH_BASE)) + ") || has(self.base)",
            message="base is required for task-vector methods and model_stock",
            check=lambda c: c.method not in METHODS_WITH_BASE or c.base is not None,
            field_path=".base",
        ),
        Rule(
            cel="self.method != 'slerp' || has(self.parameters.t)",
            message="slerp needs parameters.t",
            check=lambda c: c.method != "slerp" or c.parameters.t is not None,
            field_path=".parameters.t",
        ),
        Rule(
            cel="!(self.method in " + str(sorted(SPARSIFYING_METHODS)) + ")"
            " || has(self.parameters.density)",
            message="parameters.density is required for ties, dare and breadcrumbs methods",
            check=lambda c: c.method not in SPARSIFYING_METHODS or c.parameters.density is not None,
            field_path=".parameters.density",
        ),
        Rule(
            cel="!(self.method in "
            + str(sorted(UNWEIGHTED_METHODS))
            + ") || ((!has(self.weights) || size(self.weights) == 0)"
            " && (!has(self.overrides) || self.overrides.all(o, !has(o.weights))))",
            message="slerp and model_stock take no weights (slerp reads parameters.t)",
            check=lambda c: (
                c.method not in UNWEIGHTED_METHODS
                or (not c.weights and all(o.weights is None for o in c.overrides))
            ),
            field_path=".weights",
        ),
    )


class EnsembleConfig(ApiModel):
    """A behavioural coalition: the parents stay separate and their outputs are combined."""

    aggregation: Literal["mean-probabilities", "mean-logits", "majority-vote"]
    """How member outputs are combined."""
    weights: Annotated[list[ParentWeight], Field(max_length=32)] = []
    """Per-member weights; members left out weigh 1."""

    rules = (PARENTS_ONCE,)


class Route(ApiModel):
    """Requests in a niche go to one parent."""

    parent: Name
    """The specialist, by its name in ``spec.parents``."""
    taxonomy: Annotated[
        list[Annotated[str, Field(max_length=128)]], Field(min_length=1, max_length=16)
    ]
    """Taxonomy paths this specialist serves."""


class RouterConfig(ApiModel):
    """A router over specialist parents: each request goes to the parent whose niche fits."""

    strategy: Literal["niche", "confidence", "learned"]
    """Route by declared niche, by the specialists' own confidence, or by a trained selector."""
    routes: Annotated[list[Route], Field(max_length=32)] = []
    """Niche routes, required for strategy niche."""
    fallback: Name
    """The parent that answers when no route matches or every specialist abstains."""
    abstain_below: Fraction | None = None
    """Confidence under which a specialist abstains and the request moves on."""

    rules = (
        Rule(
            cel="self.strategy != 'niche' || size(self.routes) > 0",
            message="routes are required for strategy niche",
            check=lambda c: c.strategy != "niche" or len(c.routes) > 0,
            field_path=".routes",
        ),
    )


NOT_YET_SUPPORTED: tuple[str, ...] = ("ensemble", "router")
"""Operators whose configuration the API knows but that nothing runs yet: serving does not
implement coalitions, so admission refuses them instead of failing the breed Job after its
retries."""


def _not_yet_supported(kind: str) -> Rule:
    """The rule that refuses operator ``kind``."""
    return Rule(
        cel=f"self.kind != '{kind}'",
        message=f"operator {kind} is not yet supported: no serving runtime runs it",
        check=lambda o: o.kind != kind,
        field_path=".kind",
    )


class OperatorSpec(OneOf):
    """The operator that breeds the descendant; ``kind`` names it and its member configures it."""

    kind: OperatorKind
    """The operator. ``ensemble`` and ``router`` are not yet supported and are refused."""
    import_: ImportConfig | None = Field(default=None, alias="import")
    """Configuration of ``import``: a founder from outside."""
    finetune: FinetuneConfig | None = None
    """Configuration of ``finetune``."""
    lora: LoraConfig | None = None
    """Configuration of ``lora``."""
    distill: DistillConfig | None = None
    """Configuration of ``distill``."""
    quantize: QuantizeConfig | None = None
    """Configuration of ``quantize``."""
    prune: PruneConfig | None = None
    """Configuration of ``prune``."""
    merge: MergeConfig | None = None
    """Configuration of ``merge``."""
    ensemble: EnsembleConfig | None = None
    """Configuration of ``ensemble`` (not yet supported: refused at admission)."""
    router: RouterConfig | None = None
    """Configuration of ``router`` (not yet supported: refused at admission)."""

    rules = tuple(_not_yet_supported(kind) for kind in NOT_YET_SUPPORTED)

    @property
    def config(self) -> ApiModel:
        """The member ``kind`` names."""
        member: ApiModel = getattr(self, self._members()[self.kind])
        return member

    def content_config(self) -> dict[str, Any]:
        """The configuration that decides the artifact's bytes, as its lineage hashes it.

        The member's wire form, less where a founder is fetched from: its digest pins what its
        files are, so the same founder imported from two places is one artifact.
        """
        wire = self.config.to_wire()
        if self.kind == "import":
            wire.pop("uri", None)
        return wire
