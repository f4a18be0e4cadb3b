"""Types shared by several Studbook resources."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from studbook.api.base import ApiModel, Rule

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""An RFC 1123 label: the name of a Kubernetes object in one namespace."""

SHA256_DIGEST = r"^sha256:[0-9a-f]{64}$"
"""A content digest: ``sha256:`` and 64 lower-case hex digits."""

QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
"""A Kubernetes resource quantity such as ``500m``, ``16Gi`` or ``2``."""

DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
"""A Go duration such as ``90s``, ``10m`` or ``1h30m``."""

NO_PVC_MESSAGE = "pvc:// URIs are not supported: use a path, or a file://, s3:// or gs:// URI"
"""Why a ``pvc://`` location is refused: nothing mounts a PersistentVolumeClaim for it."""

Name = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
Digest = Annotated[str, Field(pattern=SHA256_DIGEST, max_length=71)]
Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=32)]
Duration = Annotated[str, Field(pattern=DURATION, max_length=32)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
ShortText = Annotated[str, Field(min_length=1, max_length=253)]
Spdx = Annotated[str, Field(pattern=r"^[A-Za-z0-9.+-]+$", min_length=1, max_length=64)]

RiskTier = Literal["low", "medium", "high", "critical"]
"""How much harm a wrong model can do where it is used; it scales the gates a policy applies."""

OperatorKind = Literal[
    "import", "finetune", "lora", "distill", "quantize", "prune", "merge", "ensemble", "router"
]
"""The breeding operators: variation, recombination, compression and founders from outside."""


class ObjectRef(ApiModel):
    """A reference to another Studbook resource in the same namespace."""

    name: Name
    """The resource's name."""


class ParentRef(ApiModel):
    """One parent of a descendant."""

    name: Name
    """The parent Descendant in this namespace; operator configs refer to parents by this name."""
    artifact_id: Digest | None = None
    """Pins the parent to this exact artifact; admission refuses a parent whose signed artifact
    differs."""


class Toleration(ApiModel):
    """A pod toleration, as in the core API, for tainted (often GPU) nodes."""

    key: Annotated[str, Field(max_length=253)] | None = None
    """The taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Whether the key must merely exist or equal the value."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """The taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to match; empty matches every effect."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """How long a NoExecute taint is tolerated before eviction."""


class Resources(ApiModel):
    """What a breeding or evaluation Job asks of the cluster."""

    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    """GPUs per pod (``nvidia.com/gpu``)."""
    gpu_type: Annotated[str, Field(max_length=63)] | None = None
    """A GPU product (node label ``nvidia.com/gpu.product``), for example ``NVIDIA-L4``; the
    policy's ``scheduling.allowedNodeSelector`` must list it under that label."""
    cpu: Quantity = "2"
    """CPU request and limit of the pod."""
    memory: Quantity = "8Gi"
    """Memory request and limit of the pod."""
    ephemeral_storage: Quantity | None = None
    """Scratch space the pod needs for its output before it is sealed."""
    node_selector: Annotated[dict[str, str], Field(max_length=32)] | None = None
    """Node labels the pod must match; the policy's ``scheduling.allowedNodeSelector`` must list
    each."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Taints the pod tolerates; each must be covered by one of the policy's
    ``scheduling.allowedTolerations``."""
    priority_class_name: Name | None = None
    """The pod's PriorityClass: one of the policy's ``scheduling.allowedPriorityClassNames``."""
    queue_name: Name | None = None
    """The Kueue LocalQueue the Job is submitted to (label ``kueue.x-k8s.io/queue-name``)."""
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a failed Job before the descendant fails."""
    active_deadline_seconds: Annotated[int, Field(ge=60)] | None = None
    """Wall-clock limit of one Job attempt (the Job's ``activeDeadlineSeconds``: Kubernetes ends
    the attempt when it is reached), at most the policy's ``mutationBudget.maxJobSeconds``,
    which applies when this is not set. It bounds the GPU hours a descendant can spend."""


class Compatibility(ApiModel):
    """The compatibility contract of a model: what a parent shares with its descendants."""

    base_family: ShortText
    """The pretrained base the weights descend from, for example ``llama-3.1-8b``."""
    architecture: ShortText
    """The model class, for example ``LlamaForCausalLM`` or ``BertForSequenceClassification``."""
    tokenizer_id: ShortText
    """The tokenizer identity (name plus digest); weight-space methods need it equal."""
    runtime: Literal["transformers", "vllm", "onnx", "llamacpp", "triton"] = "transformers"
    """The serving runtime the artifact is built for."""
    quantization: Literal["none", "int8", "int4"] = "none"
    """The weight quantization of the artifact: ``none`` (floating point), ``int8`` or ``int4``
    (what the ``quantize`` operator makes with scheme ``int8-weight-only``, one scale per output
    channel, or ``int4-weight-only``, one scale and zero point per group of input columns). No
    operator or runtime handles fp8 or nf4 weights, so they are not offered."""
    adapter_format: Literal["none", "peft-lora"] = "none"
    """Whether the artifact is an adapter over its base, and in which format."""


class DatasetRef(ApiModel):
    """A dataset named by URI and pinned by digest, with its licence and restrictions."""

    name: Name
    """The dataset's name, unique within the resource; configs refer to it by this name."""
    uri: ShortText
    """Where the dataset lives: a path, or a ``file://``, ``s3://`` or ``gs://`` URI. ``pvc://``
    is refused: no Job mounts a PersistentVolumeClaim for data."""
    digest: Digest
    """The SHA-256 of the dataset's content; a mismatch refuses the dataset before use."""
    license: Spdx | None = None
    """The dataset's licence, as an SPDX identifier."""
    restrictions: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=16)] = []
    """Use restrictions that travel with the data, for example ``no-commercial`` or ``pii``."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!self.uri.startsWith('pvc://')",
            message=NO_PVC_MESSAGE,
            check=lambda d: not d.uri.startswith("pvc://"),
            field_path=".uri",
        ),
    )


class TrainingData(DatasetRef):
    """A dataset in a descendant's data lineage."""

    role: Literal["train", "validation", "seed", "calibration"] = "train"
    """How breeding used it: training data, validation, distillation seed inputs, or
    calibration for quantization."""


class Niche(ApiModel):
    """A machine-readable niche: where a specialist is meant to work and should abstain outside."""

    taxonomy: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=16)] = []
    """Task taxonomy paths, for example ``classification/sentiment``."""
    languages: Annotated[list[Annotated[str, Field(max_length=35)]], Field(max_length=32)] = []
    """BCP 47 language tags the model serves."""
    data_class: Literal["public", "internal", "confidential", "restricted"] = "public"
    """The most sensitive data class the model may see."""
    hardware: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=8)] = []
    """Hardware the model is built for, for example ``cpu`` or ``nvidia-l4``."""
    latency_class: Literal["interactive", "batch", "offline"] = "batch"
    """How quickly answers are needed."""
    confidence_range: Annotated[list[Fraction], Field(min_length=2, max_length=2)] | None = None
    """``[low, high]``: below ``low`` the model abstains; above ``high`` it answers alone."""

    rules = (
        Rule(
            cel="!has(self.confidenceRange) || self.confidenceRange[0] <= self.confidenceRange[1]",
            message="confidenceRange must be [low, high] with low <= high",
            check=lambda n: (
                n.confidence_range is None or n.confidence_range[0] <= n.confidence_range[1]
            ),
            field_path=".confidenceRange",
        ),
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One observation of a resource's state, in the Kubernetes API conventions."""

    type: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]*$", max_length=63)]
    """The aspect observed, in CamelCase, for example ``Admitted`` or ``Ready``."""
    status: ConditionStatus
    """Whether the condition holds."""
    reason: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=128)]
    """Why, as a CamelCase constant from :mod:`studbook.api.reasons`."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """A human-readable explanation."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` the condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]
"""A list-map of conditions keyed by ``type``."""
