"""``quantize`` (weight-only int8 or int4) and ``prune`` (magnitude, heads, FFN rows).

A ``quantize`` output is a transformers model directory whose ``model.safetensors`` holds, for
every quantized module ``<m>`` (listed in ``studbook_quantization.json`` with the scheme), in
place of ``<m>.weight``:

``int8-weight-only`` / ``per-channel`` (symmetric, ``w ≈ q * scale``):
    ``<m>.weight``        int8 ``[rows, cols]``, ``q`` in [-127, 127]
    ``<m>.weight_scale``  float32 ``[rows]``, ``max|w_row| / 127``

``int4-weight-only`` / ``per-group`` (asymmetric, ``w ≈ (q - zero) * scale``; the json adds
``group_size``, ``G``):
    ``<m>.weight``        uint8 ``[rows, ceil(cols / 2)]``: column ``2j`` in the low nibble of
                          byte ``j``, column ``2j + 1`` in the high one (an odd width leaves the
                          last high nibble 0)
    ``<m>.weight_scale``  float32 ``[rows, ceil(cols / G)]``, ``(max - min) / 15`` of the group
    ``<m>.weight_zero``   uint8 ``[rows, ceil(cols / G)]``, the zero point in [0, 15]

Rows are a linear layer's output channels (an embedding table's rows) and columns its input
features (the embedding dimension); group ``g`` of a row covers columns ``[g*G, (g+1)*G)``, so a
width ``G`` does not divide ends each row with one shorter group. Biases and skipped modules stay
in floating point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch

from studbook_trainer.operators.base import Operator, OperatorError, RunContext, log, register
from studbook_trainer.operators.training import evaluate, load_rows, save_model

QUANT_CONFIG = "studbook_quantization.json"
"""Written beside quantized weights; :func:`load_quantized` reads it."""

SCHEMES = {"int8-weight-only": "per-channel", "int4-weight-only": "per-group"}
"""Each implemented scheme and the one granularity it is implemented with."""


def dir_size(path: Path) -> int:
    """Bytes of the weight files in a model directory."""
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) or fnmatchcase(name, p + ".*") for p in patterns)


def _load_any(path: Path, device: Any) -> tuple[Any, Any, str]:
    """A model with whatever head its config names, its tokenizer and the task it fits."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(path)
    archs = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        model, task = (
            AutoModelForSequenceClassification.from_pretrained(path),
            "sequence-classification",
        )
    elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        model, task = AutoModelForCausalLM.from_pretrained(path), "causal-lm"
    else:
        model, task = AutoModel.from_pretrained(path), "encoder"
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer, task


@dataclass(frozen=True)
class QuantizePlan:
    """Weight-only integer quantization."""

    scheme: str = "int8-weight-only"
    granularity: str = "per-channel"
    group_size: int | None = None
    skip_modules: tuple[str, ...] = field(default=())
    calibration_dataset: str | None = None

    def check(self) -> None:
        """Refuse a combination no module below implements."""
        supported = ", ".join(f"{s}/{g}" for s, g in SCHEMES.items())
        if SCHEMES.get(self.scheme) != self.granularity:
            raise OperatorError(
                f"unsupported quantization {self.scheme}/{self.granularity}; supported: {supported}"
            )
        if (self.granularity == "per-group") != (self.group_size is not None):
            raise OperatorError("group_size is required with granularity per-group, and only then")
        if self.group_size is not None and self.group_size < 1:
            raise OperatorError(f"group_size {self.group_size} is not a positive integer")


class Int8Linear(torch.nn.Module):
    """A linear layer holding int8 weights and one float scale per output channel."""

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        """Quantize symmetrically: ``scale = max|w_row| / 127``."""
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        out = cls(linear.in_features, linear.out_features, linear.bias is not None)
        out.weight.copy_(q)
        out.weight_scale.copy_(scale)
        if linear.bias is not None and out.bias is not None:
            out.bias.data.copy_(linear.bias.detach().float())
        return out.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize on the fly."""
        w = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return torch.nn.functional.linear(
            x, w, None if self.bias is None else self.bias.to(x.dtype)
        )


class Int8Embedding(torch.nn.Module):
    """An embedding table holding int8 rows and one float scale per row."""

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, num: int, dim: int, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings = num
        self.embedding_dim = dim
        self.padding_idx = padding_idx
        self.register_buffer("weight", torch.zeros(num, dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num, dtype=torch.float32))

    @classmethod
    def from_embedding(cls, emb: torch.nn.Embedding) -> Int8Embedding:
        """Quantize symmetrically per row."""
        w = emb.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        out = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        out.weight.copy_(torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        out.weight_scale.copy_(scale)
        return out.to(emb.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up and dequantize the rows asked for."""
        rows = torch.nn.functional.embedding(ids, self.weight).float()
        return rows * self.weight_scale[ids].unsqueeze(-1)


def quantize_int4(
    w: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed 4-bit values, scales and zero points of ``w`` (``[rows, cols]``), group by group.

    Each group's range is widened to hold 0, so 0 (padding rows, pruned weights) stays exact and
    the zero-padding of a short last group cannot change its range; every weight is then within
    ``scale / 2`` of its dequantized value.
    """
    rows, cols = w.shape
    groups = -(-cols // group_size)
    padded = torch.nn.functional.pad(w.detach().float(), (0, groups * group_size - cols))
    grouped = padded.reshape(rows, groups, group_size)
    low = grouped.amin(dim=-1).clamp(max=0.0)
    high = grouped.amax(dim=-1).clamp(min=0.0)
    scale = ((high - low) / 15.0).clamp_min(1e-12)
    zero = torch.round(-low / scale).clamp_(0, 15)
    q = torch.round(grouped / scale[..., None]) + zero[..., None]
    q = q.clamp_(0, 15).to(torch.uint8).reshape(rows, -1)[:, :cols]
    if cols % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed.contiguous(), scale, zero.to(torch.uint8)


def dequantize_int4(
    packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, cols: int, group_size: int
) -> torch.Tensor:
    """Float32 weights from :func:`quantize_int4`'s output; leading dimensions pass through."""
    q = torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)[..., :cols]
    group = torch.arange(cols, device=packed.device) // group_size
    return (q.float() - zero[..., group].float()) * scale[..., group]


class Int4Linear(torch.nn.Module):
    """A linear layer holding packed 4-bit weights and a scale and zero point per group."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        groups = -(-in_features // group_size)
        packed = (out_features, -(-in_features // 2))
        self.register_buffer("weight", torch.zeros(packed, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group_size: int) -> Int4Linear:
        """Quantize each group of ``group_size`` input columns with :func:`quantize_int4`."""
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        for buffer, value in zip(
            (out.weight, out.weight_scale, out.weight_zero),
            quantize_int4(linear.weight, group_size),
            strict=True,
        ):
            buffer.copy_(value)
        if linear.bias is not None and out.bias is not None:
            out.bias.data.copy_(linear.bias.detach().float())
        return out.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize on the fly."""
        w = dequantize_int4(
            self.weight, self.weight_scale, self.weight_zero, self.in_features, self.group_size
        )
        return torch.nn.functional.linear(
            x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        )


class Int4Embedding(torch.nn.Module):
    """An embedding table holding packed 4-bit rows and a scale and zero point per group."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero: torch.Tensor

    def __init__(self, num: int, dim: int, padding_idx: int | None, group_size: int) -> None:
        super().__init__()
        self.num_embeddings = num
        self.embedding_dim = dim
        self.padding_idx = padding_idx
        self.group_size = group_size
        groups = -(-dim // group_size)
        self.register_buffer("weight", torch.zeros(num, -(-dim // 2), dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(num, groups))
        self.register_buffer("weight_zero", torch.zeros(num, groups, dtype=torch.uint8))

    @classmethod
    def from_embedding(cls, emb: torch.nn.Embedding, group_size: int) -> Int4Embedding:
        """Quantize each row in groups of ``group_size`` with :func:`quantize_int4`."""
        out = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, group_size)
        for buffer, value in zip(
            (out.weight, out.weight_scale, out.weight_zero),
            quantize_int4(emb.weight, group_size),
            strict=True,
        ):
            buffer.copy_(value)
        return out.to(emb.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up and dequantize the rows asked for."""
        return dequantize_int4(
            self.weight[ids],
            self.weight_scale[ids],
            self.weight_zero[ids],
            self.embedding_dim,
            self.group_size,
        )


def _quantized(module: torch.nn.Module, plan: QuantizePlan) -> torch.nn.Module:
    """The quantized form of a linear or embedding module, per ``plan``."""
    if plan.scheme == "int4-weight-only":
        assert plan.group_size is not None
        if isinstance(module, torch.nn.Embedding):
            return Int4Embedding.from_embedding(module, plan.group_size)
        assert isinstance(module, torch.nn.Linear)
        return Int4Linear.from_linear(module, plan.group_size)
    if isinstance(module, torch.nn.Embedding):
        return Int8Embedding.from_embedding(module)
    assert isinstance(module, torch.nn.Linear)
    return Int8Linear.from_linear(module)


def _empty_quantized(module: torch.nn.Module, plan: QuantizePlan) -> torch.nn.Module:
    """A quantized module of ``module``'s shape, to load a checkpoint into."""
    int4 = plan.group_size if plan.scheme == "int4-weight-only" else None
    if isinstance(module, torch.nn.Embedding):
        num, dim, pad = module.num_embeddings, module.embedding_dim, module.padding_idx
        return Int8Embedding(num, dim, pad) if int4 is None else Int4Embedding(num, dim, pad, int4)
    if isinstance(module, torch.nn.Linear):
        sizes = (module.in_features, module.out_features, module.bias is not None)
        return Int8Linear(*sizes) if int4 is None else Int4Linear(*sizes, int4)
    raise OperatorError(f"{QUANT_CONFIG} lists a {type(module).__name__}: not linear or embedding")


def _recorded_plan(meta: Any) -> tuple[QuantizePlan, list[str]]:
    """The plan and module names a package's :data:`QUANT_CONFIG` records, checked."""
    fields = meta if isinstance(meta, dict) else {}
    names, group_size = fields.get("modules"), fields.get("group_size")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise OperatorError(f"{QUANT_CONFIG} has no list of module names")
    if group_size is not None and type(group_size) is not int:
        raise OperatorError(f"{QUANT_CONFIG}: group_size {group_size!r} is not an integer")
    plan = QuantizePlan(
        scheme=str(fields.get("scheme")),
        granularity=str(fields.get("granularity")),
        group_size=group_size,
    )
    plan.check()
    return plan, names


def _quantizable(
    model: torch.nn.Module, skip: tuple[str, ...], embeddings: bool = False
) -> list[str]:
    """Linear (and, if asked, embedding) modules to quantize; tied weights are left alone."""
    counts: dict[int, int] = {}
    for _, module in model.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor):
            counts[id(w)] = counts.get(id(w), 0) + 1
    kinds: tuple[type, ...] = (
        (torch.nn.Linear, torch.nn.Embedding) if embeddings else (torch.nn.Linear,)
    )
    names = []
    for name, module in model.named_modules():
        shared = counts.get(id(getattr(module, "weight", None)), 0) != 1
        if isinstance(module, kinds) and not _skipped(name, skip) and not shared:
            names.append(name)
    return names


def _replace(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def load_quantized(path: Path, device: Any = "cpu") -> tuple[Any, Any]:
    """Load a ``quantize`` output: the architecture from its config, quantized modules restored.

    Its :data:`QUANT_CONFIG` says which modules are int8 or int4; they dequantize on the fly.
    """
    from safetensors.torch import load_file
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    try:
        meta = json.loads((path / QUANT_CONFIG).read_text())
    except ValueError:
        raise OperatorError(f"{QUANT_CONFIG} is not JSON") from None
    plan, names = _recorded_plan(meta)
    config = AutoConfig.from_pretrained(path)
    archs = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        model = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    else:
        model = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise OperatorError(f"{QUANT_CONFIG} names {name!r}, which the model lacks") from None
        _replace(model, name, _empty_quantized(module, plan))
    state = load_file(path / "model.safetensors")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor whose shape the recorded layout does not give
        raise OperatorError(f"quantized checkpoint mismatch: {error}") from None
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = [m for m in missing if m not in tied]
    if unexpected or missing:
        raise OperatorError(
            f"quantized checkpoint mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


class QuantizeOperator(Operator):
    """Weight-only quantization: int8 per output channel, or int4 per group of input columns."""

    name = "quantize"
    reference = "https://arxiv.org/abs/2208.07339"
    plan_type = QuantizePlan

    def run(self, plan: QuantizePlan, ctx: RunContext) -> dict[str, Any]:
        """Quantize every linear layer not skipped; report size and accuracy before/after."""
        from safetensors.torch import save_file

        plan.check()
        if len(ctx.parents) != 1:
            raise OperatorError("quantize takes exactly one parent")
        src = ctx.parents[0].path
        device = ctx.torch_device()
        model, tokenizer, task = _load_any(src, device)
        rows = (
            load_rows(ctx, [plan.calibration_dataset], task)  # type: ignore[arg-type]
            if plan.calibration_dataset and task != "encoder"
            else []
        )
        before = evaluate(model, tokenizer, rows, task, device) if rows else None  # type: ignore[arg-type]
        names = _quantizable(model, plan.skip_modules, embeddings=True)
        for name in names:
            _replace(model, name, _quantized(model.get_submodule(name), plan))
        after = evaluate(model, tokenizer, rows, task, device) if rows else None  # type: ignore[arg-type]
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, ctx.out_dir / "model.safetensors", metadata={"format": "pt"})
        model.config.save_pretrained(ctx.out_dir)
        tokenizer.save_pretrained(ctx.out_dir)
        meta: dict[str, Any] = {"scheme": plan.scheme, "granularity": plan.granularity}
        if plan.group_size is not None:
            meta["group_size"] = plan.group_size
        meta["modules"] = names
        (ctx.out_dir / QUANT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        report = {
            "modules": len(names),
            "bytes_before": dir_size(src),
            "bytes_after": dir_size(ctx.out_dir),
            "before": before,
            "after": after,
        }
        log.info(
            "quantized %d layers (%s): %d -> %d bytes",
            len(names),
            plan.scheme,
            report["bytes_before"],
            report["bytes_after"],
        )
        return report


@dataclass(frozen=True)
class PrunePlan:
    """Remove weights to a target sparsity."""

    method: str
    target_sparsity: float
    scope: str = "per-layer"
    skip_modules: tuple[str, ...] = field(default=())
    calibration_dataset: str | None = None

    def check(self) -> None:
        """Refuse values out of range."""
        if self.method not in ("magnitude", "attention-heads", "ffn-rows"):
            raise OperatorError(f"unknown prune method {self.method!r}")
        if not 0.0 < self.target_sparsity < 1.0:
            raise OperatorError(f"target_sparsity {self.target_sparsity} is out of range (0, 1)")
        if self.scope not in ("global", "per-layer"):
            raise OperatorError(f"unknown scope {self.scope!r}")


def _ffn_pairs(model: torch.nn.Module) -> list[tuple[list[torch.nn.Linear], torch.nn.Linear]]:
    """Per layer: the linears producing the FFN's hidden units, and the one consuming them."""
    pairs = []
    for _, module in model.named_modules():
        up = [getattr(module, n, None) for n in ("gate_proj", "up_proj")]
        down = getattr(module, "down_proj", None)
        if all(isinstance(m, torch.nn.Linear) for m in up) and isinstance(down, torch.nn.Linear):
            pairs.append(([m for m in up if isinstance(m, torch.nn.Linear)], down))
        inter = getattr(module, "intermediate", None)
        output = getattr(module, "output", None)
        dense_in = getattr(inter, "dense", None)
        dense_out = getattr(output, "dense", None)
        if (
            isinstance(dense_in, torch.nn.Linear)
            and isinstance(dense_out, torch.nn.Linear)
            and dense_in.out_features == dense_out.in_features
        ):
            pairs.append(([dense_in], dense_out))
    return pairs


def _shrink_rows(lin: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(lin.in_features, len(keep), bias=lin.bias is not None)
    new.weight.data.copy_(lin.weight.data[keep])
    if lin.bias is not None and new.bias is not None:
        new.bias.data.copy_(lin.bias.data[keep])
    return new.to(lin.weight.device, lin.weight.dtype)


def _shrink_cols(lin: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(len(keep), lin.out_features, bias=lin.bias is not None)
    new.weight.data.copy_(lin.weight.data[:, keep])
    if lin.bias is not None and new.bias is not None:
        new.bias.data.copy_(lin.bias.data)
    return new.to(lin.weight.device, lin.weight.dtype)


def _set(model: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        if module is old:
            _replace(model, name, new)
            return
    raise RuntimeError("module not found")


class PruneOperator(Operator):
    """Magnitude pruning (unstructured) or structured removal of FFN rows and attention heads."""

    name = "prune"
    reference = "https://arxiv.org/abs/1506.02626"
    plan_type = PrunePlan

    def run(self, plan: PrunePlan, ctx: RunContext) -> dict[str, Any]:
        """Prune, report sparsity, sizes and (with a calibration set) the accuracy change."""
        plan.check()
        if len(ctx.parents) != 1:
            raise OperatorError("prune takes exactly one parent")
        src = ctx.parents[0].path
        device = ctx.torch_device()
        model, tokenizer, task = _load_any(src, device)
        rows = (
            load_rows(ctx, [plan.calibration_dataset], task)  # type: ignore[arg-type]
            if plan.calibration_dataset and task != "encoder"
            else []
        )
        before = evaluate(model, tokenizer, rows, task, device) if rows else None  # type: ignore[arg-type]
        with torch.no_grad():
            if plan.method == "magnitude":
                detail = self._magnitude(model, plan)
            elif plan.method == "ffn-rows":
                detail = self._ffn_rows(model, plan)
            else:
                detail = self._heads(model, plan)
        after = evaluate(model, tokenizer, rows, task, device) if rows else None  # type: ignore[arg-type]
        save_model(model, tokenizer, ctx.out_dir)
        report = {
            "method": plan.method,
            **detail,
            "bytes_before": dir_size(src),
            "bytes_after": dir_size(ctx.out_dir),
            "before": before,
            "after": after,
        }
        log.info("pruned (%s): %s", plan.method, detail)
        return report

    def _magnitude(self, model: torch.nn.Module, plan: PrunePlan) -> dict[str, Any]:
        names = _quantizable(model, plan.skip_modules)
        weights: list[torch.Tensor] = []
        for n in names:
            w = model.get_submodule(n).weight
            assert isinstance(w, torch.Tensor)
            weights.append(w)
        total = sum(w.numel() for w in weights)
        if plan.scope == "global":
            mags = torch.cat([w.detach().abs().reshape(-1).float() for w in weights])
            k = int(plan.target_sparsity * mags.numel())
            thr = float(mags.kthvalue(k).values) if k > 0 else -1.0
            for w in weights:
                w.masked_fill_(w.abs() <= thr, 0.0)
        else:
            for w in weights:
                k = int(plan.target_sparsity * w.numel())
                if k > 0:
                    thr = float(w.detach().abs().reshape(-1).float().kthvalue(k).values)
                    w.masked_fill_(w.abs() <= thr, 0.0)
        zeros = sum(int(torch.count_nonzero(w == 0)) for w in weights)
        return {"sparsity": zeros / max(1, total), "modules": len(names)}

    def _ffn_rows(self, model: Any, plan: PrunePlan) -> dict[str, Any]:
        pairs = _ffn_pairs(model)
        if not pairs:
            raise OperatorError("ffn-rows pruning found no FFN blocks in this architecture")
        width = pairs[0][1].in_features
        keep_n = max(1, round(width * (1 - plan.target_sparsity)))
        for ups, down in pairs:
            score = down.weight.detach().float().norm(dim=0)
            for up in ups:
                score = score * up.weight.detach().float().norm(dim=1)
            keep = torch.sort(torch.topk(score, keep_n).indices).values
            for up in ups:
                _set(model, up, _shrink_rows(up, keep))
            _set(model, down, _shrink_cols(down, keep))
        for key in ("intermediate_size", "n_inner"):
            if hasattr(model.config, key):
                setattr(model.config, key, keep_n)
        return {"ffn_width_before": width, "ffn_width_after": keep_n, "layers": len(pairs)}

    def _heads(self, model: Any, plan: PrunePlan) -> dict[str, Any]:
        config = model.config
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if not heads or not hidden:
            raise OperatorError("attention-heads pruning needs num_attention_heads and hidden_size")
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        drop_n = round(heads * plan.target_sparsity)
        zeroed = 0
        for _, module in model.named_modules():
            # (producing linears whose rows are per head, the linear whose columns are per head)
            if isinstance(getattr(module, "q_proj", None), torch.nn.Linear) and isinstance(
                getattr(module, "o_proj", None), torch.nn.Linear
            ):
                producers, consumer = [module.q_proj], module.o_proj
            elif hasattr(module, "self") and hasattr(module, "output"):
                sa, out = module.self, module.output
                if not all(
                    isinstance(getattr(sa, n, None), torch.nn.Linear)
                    for n in ("query", "key", "value")
                ):
                    continue
                producers, consumer = [sa.query, sa.key, sa.value], out.dense
            else:
                continue
            if consumer.in_features != heads * head_dim:
                continue
            # a head's importance: the norm of its slice of the output projection
            per_head = (
                consumer.weight.detach().float().reshape(-1, heads, head_dim).norm(dim=(0, 2))
            )
            drop = torch.topk(per_head, drop_n, largest=False).indices
            for h in drop.tolist():
                rows = slice(h * head_dim, (h + 1) * head_dim)
                for lin in producers:
                    lin.weight[rows] = 0.0
                    if lin.bias is not None:
                        lin.bias[rows] = 0.0
                consumer.weight[:, rows] = 0.0
                zeroed += 1
        if not zeroed and drop_n:
            raise OperatorError("attention-heads pruning found no attention blocks it understands")
        return {
            "heads_per_layer": heads,
            "heads_removed_per_layer": drop_n,
            "heads_removed": zeroed,
        }


for _op in (QuantizeOperator(), PruneOperator()):
    register(_op)
