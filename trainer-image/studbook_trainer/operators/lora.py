"""``lora``: train a LoRA adapter (peft), compose several adapters, merge one into its base."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studbook_trainer.operators.base import Operator, OperatorError, RunContext, log, register
from studbook_trainer.operators.simple import load_for_task
from studbook_trainer.operators.training import (
    TrainPlan,
    evaluate,
    load_rows,
    save_model,
    train_loop,
)

ADAPTER_CONFIG = "adapter_config.json"
BASE_LINK = "studbook_base.json"
"""Written beside an adapter: which parent (by name and digest if known) it was trained on."""


@dataclass(frozen=True)
class CompositionPlan:
    """Combine the parents' adapters instead of training one."""

    method: str
    """``linear``, ``cat`` or ``svd`` (peft's ``add_weighted_adapter`` combinations)."""
    weights: tuple[float, ...]
    """One weight per adapter parent, in parent order."""


@dataclass(frozen=True)
class LoraPlan(TrainPlan):
    """A LoRA adapter on the base parent."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=())
    compose: CompositionPlan | None = None
    merge_into_base: bool = False

    def check(self) -> None:
        """Refuse values out of range."""
        if self.compose is None:
            super().check()
        if self.rank < 1 or self.alpha <= 0:
            raise OperatorError("rank must be >= 1 and alpha > 0")
        if not self.target_modules:
            raise OperatorError("target_modules must name at least one module")
        if self.compose is not None and self.compose.method not in ("linear", "cat", "svd"):
            raise OperatorError(f"unknown adapter composition {self.compose.method!r}")


def is_adapter(path: Path) -> bool:
    """Whether a directory holds a peft adapter rather than a full model."""
    return (path / ADAPTER_CONFIG).is_file()


def _drop_host_details(out: Path, base: str) -> None:
    """Keep only what the inputs decide in a saved adapter, so the same inputs give the same id.

    peft records the base's local path (a scratch directory that differs on every run) in the
    adapter config and in a model card it writes beside it, and ``target_modules`` in set order,
    which changes with the interpreter's hash seed. The base is named by its parent name instead.
    """
    (out / "README.md").unlink(missing_ok=True)
    path = out / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class LoraOperator(Operator):
    """Low-rank adapters with peft: train, compose (linear / cat / SVD) and merge into the base."""

    name = "lora"
    reference = "https://arxiv.org/abs/2106.09685"
    plan_type = LoraPlan

    def run(self, plan: LoraPlan, ctx: RunContext) -> dict[str, Any]:
        """Train or compose, then save an adapter (or the merged full model)."""
        plan.check()
        bases = [p for p in ctx.parents if not is_adapter(p.path)]
        adapters = [p for p in ctx.parents if is_adapter(p.path)]
        if len(bases) != 1:
            raise OperatorError(
                f"lora needs exactly one full-model parent as its base, got {len(bases)}"
            )
        base = bases[0]
        device = ctx.torch_device()
        model, tokenizer = load_for_task(base.path, plan.task, plan.num_labels, device)
        report: dict[str, Any] = {"base": base.name}
        if plan.compose is None:
            if adapters:
                raise OperatorError("training a LoRA adapter takes only the base parent")
            model, report = self._train(plan, ctx, model, tokenizer, device, report)
        else:
            model = self._compose(plan, model, adapters, report)
        if plan.merge_into_base:
            merged = model.merge_and_unload()
            save_model(merged, tokenizer, ctx.out_dir)
            report["output"] = "merged-model"
        else:
            model.save_pretrained(ctx.out_dir, safe_serialization=True)
            nested = ctx.out_dir / "composed"
            if nested.is_dir():  # peft keeps non-default adapters in a folder of their name
                for item in nested.iterdir():
                    item.rename(ctx.out_dir / item.name)
                nested.rmdir()
            tokenizer.save_pretrained(ctx.out_dir)
            _drop_host_details(ctx.out_dir, base.name)
            (ctx.out_dir / BASE_LINK).write_text(json.dumps({"base": base.name}) + "\n")
            report["output"] = "adapter"
        return report

    def _peft_config(self, plan: LoraPlan) -> Any:
        from peft import LoraConfig, TaskType

        classification = plan.task == "sequence-classification"
        return LoraConfig(
            r=plan.rank,
            lora_alpha=plan.alpha,  # type: ignore[arg-type]
            lora_dropout=plan.dropout,
            target_modules=list(plan.target_modules),
            task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM,
        )

    def _train(
        self,
        plan: LoraPlan,
        ctx: RunContext,
        model: Any,
        tokenizer: Any,
        device: Any,
        report: dict[str, Any],
    ) -> tuple[Any, dict[str, Any]]:
        from peft import get_peft_model

        rows = load_rows(ctx, plan.datasets, plan.task)
        model = get_peft_model(model, self._peft_config(plan))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info("lora: %d of %d parameters trainable", trainable, total)
        before = evaluate(model, tokenizer, rows, plan.task, device, plan.max_seq_length)
        losses = train_loop(model, plan, rows, tokenizer, device)
        after = evaluate(model, tokenizer, rows, plan.task, device, plan.max_seq_length)
        report.update(
            trainable=trainable,
            total=total,
            losses=[losses[0], losses[-1]],
            before=before,
            after=after,
        )
        return model, report

    def _compose(
        self, plan: LoraPlan, model: Any, adapters: list[Any], report: dict[str, Any]
    ) -> Any:
        from peft import PeftModel

        assert plan.compose is not None
        if len(adapters) < 1:
            raise OperatorError("adapter composition needs at least one adapter parent")
        if len(plan.compose.weights) != len(adapters):
            raise OperatorError(
                f"composition has {len(plan.compose.weights)} weights for {len(adapters)} adapters"
            )
        names = [f"a{i}" for i in range(len(adapters))]
        peft_model = PeftModel.from_pretrained(model, adapters[0].path, adapter_name=names[0])
        for name, adapter in zip(names[1:], adapters[1:], strict=True):
            peft_model.load_adapter(adapter.path, adapter_name=name)
        kwargs: dict[str, Any] = {}
        if plan.compose.method == "svd":
            kwargs["svd_rank"] = plan.rank
        peft_model.add_weighted_adapter(
            names,
            list(plan.compose.weights),
            adapter_name="composed",
            combination_type=plan.compose.method,
            **kwargs,
        )
        peft_model.set_adapter("composed")
        for name in names:
            peft_model.delete_adapter(name)
        report["composed"] = [a.name for a in adapters]
        report["combination"] = plan.compose.method
        return peft_model


register(LoraOperator())
