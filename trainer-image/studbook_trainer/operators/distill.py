"""``distill``: teachers label inputs independently; the student learns the accepted labels.

Every teacher runs on every input on its own. An input is accepted when enough teachers give
the same label (``min_agreement``) with enough mean confidence (``min_confidence``); a seeded
fraction of the refused (disagreement) inputs is kept with soft labels only, because the
uncertain boundary is part of what the teachers know. Which teachers voted what, and the
verdict, is recorded for every input in ``distillation.jsonl`` beside the student.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from studbook_trainer.operators.base import Operator, OperatorError, RunContext, log, register
from studbook_trainer.operators.training import (
    TrainPlan,
    evaluate,
    load_rows,
    save_model,
    train_loop,
)

RECORD = "distillation.jsonl"
"""Per input: teachers' votes, the verdict and the label the student learned."""


@dataclass(frozen=True)
class AgreementPlan:
    """Which teacher labels are accepted."""

    min_agreement: float = 1.0
    min_confidence: float = 0.7
    keep_disagreements: float = 0.1


@dataclass(frozen=True)
class DistillPlan(TrainPlan):
    """Teachers to student on logits with temperature."""

    student_parent: str | None = None
    student_layers: int | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    agreement: AgreementPlan = field(default_factory=AgreementPlan)

    def check(self) -> None:
        """Refuse values out of range."""
        super().check()
        if self.task != "sequence-classification":
            raise OperatorError("distill supports task sequence-classification")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise OperatorError("temperature must be > 0 and alpha within [0, 1]")
        a = self.agreement
        if not (
            0 < a.min_agreement <= 1
            and 0 <= a.min_confidence <= 1
            and 0 <= a.keep_disagreements <= 1
        ):
            raise OperatorError("agreement thresholds must be fractions")


def _layer_list(model: torch.nn.Module, n: int) -> tuple[torch.nn.Module, str] | None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            parent_name, _, attr = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attr
    return None


def keep_layers(model: Any, n: int) -> None:
    """Keep ``n`` evenly spaced transformer layers (first and last included)."""
    total = model.config.num_hidden_layers
    if n >= total:
        return
    found = _layer_list(model, total)
    if found is None:
        raise OperatorError("cannot find the transformer layers to shrink the student")
    owner, attr = found
    layers = getattr(owner, attr)
    idx = sorted({round(i * (total - 1) / max(1, n - 1)) for i in range(n)}) if n > 1 else [0]
    setattr(owner, attr, torch.nn.ModuleList([layers[i] for i in idx]))
    model.config.num_hidden_layers = len(idx)


class DistillOperator(Operator):
    """Knowledge distillation with a teacher-agreement filter."""

    name = "distill"
    reference = "https://arxiv.org/abs/1503.02531"
    plan_type = DistillPlan

    def run(self, plan: DistillPlan, ctx: RunContext) -> dict[str, Any]:
        """Label with the teachers, filter, train the student, record the provenance."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        plan.check()
        device = ctx.torch_device()
        teachers = [p for p in ctx.parents if p.name != plan.student_parent]
        if not teachers:
            raise OperatorError("distill needs at least one teacher parent")
        rows = load_rows(ctx, plan.datasets, "causal-lm")  # texts; labels are optional
        tokenizer = AutoTokenizer.from_pretrained(teachers[0].path)
        probs: dict[str, torch.Tensor] = {}
        for t in teachers:
            model = AutoModelForSequenceClassification.from_pretrained(t.path).to(device).eval()
            if model.config.num_labels != plan.num_labels:
                raise OperatorError(
                    f"teacher {t.name!r} has {model.config.num_labels} labels, "
                    f"the plan {plan.num_labels}"
                )
            probs[t.name] = self._probs(model, tokenizer, rows, plan, device)
            del model
        records, train_rows = self._filter(plan, rows, probs)
        counts = Counter(r["verdict"] for r in records)
        log.info("distill: %s", dict(counts))
        if not train_rows:
            raise OperatorError("the teachers agreed on no input; nothing to distill")

        student_src = (
            ctx.parent(plan.student_parent).path if plan.student_parent else teachers[0].path
        )
        student = AutoModelForSequenceClassification.from_pretrained(
            student_src, num_labels=plan.num_labels
        )
        if plan.student_layers:
            keep_layers(student, plan.student_layers)
        student.to(device)
        temp, alpha = plan.temperature, plan.alpha

        def loss_fn(
            out: Any, batch: dict[str, torch.Tensor], chunk: list[dict[str, Any]]
        ) -> torch.Tensor:
            soft = torch.tensor([r["soft"] for r in chunk], device=device)
            hard = torch.tensor([r["hard"] for r in chunk], device=device)
            logp = torch.log_softmax(out.logits / temp, dim=-1)
            kd = torch.nn.functional.kl_div(logp, soft, reduction="batchmean") * temp * temp
            if (hard >= 0).any():
                ce = torch.nn.functional.cross_entropy(out.logits, hard, ignore_index=-100)
                return alpha * kd + (1 - alpha) * ce
            return kd

        losses = train_loop(student, plan, train_rows, tokenizer, device, loss_fn=loss_fn)
        save_model(student, tokenizer, ctx.out_dir)
        with (ctx.out_dir / RECORD).open("w") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        report: dict[str, Any] = {"verdicts": dict(counts), "losses": [losses[0], losses[-1]]}
        labelled = [r for r in rows if isinstance(r.get("label"), int)]
        if labelled:
            report["student"] = evaluate(student, tokenizer, labelled, plan.task, device)
            teacher_votes = torch.stack([p.argmax(-1) for p in probs.values()])
            gold = torch.tensor([r.get("label", -1) for r in rows])
            report["teachers"] = {
                name: float((p.argmax(-1) == gold).float().mean()) for name, p in probs.items()
            }
            del teacher_votes
        return report

    @torch.no_grad()
    def _probs(
        self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], plan: DistillPlan, device: Any
    ) -> torch.Tensor:
        out = []
        for i in range(0, len(rows), 64):
            enc = tokenizer(
                [r["text"] for r in rows[i : i + 64]],
                padding=True,
                truncation=True,
                max_length=plan.max_seq_length,
                return_tensors="pt",
            ).to(device)
            out.append(torch.softmax(model(**enc).logits.float() / plan.temperature, -1).cpu())
        return torch.cat(out)

    def _filter(
        self, plan: DistillPlan, rows: list[dict[str, Any]], probs: dict[str, torch.Tensor]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        a = plan.agreement
        names = list(probs)
        mean = torch.stack([probs[n] for n in names]).mean(0)
        records: list[dict[str, Any]] = []
        train: list[dict[str, Any]] = []
        refused: list[int] = []
        for i, row in enumerate(rows):
            votes = {n: int(probs[n][i].argmax()) for n in names}
            label, count = sorted(Counter(votes.values()).items(), key=lambda kv: (-kv[1], kv[0]))[
                0
            ]
            agreement = count / len(names)
            confidence = float(mean[i, label])
            accepted = agreement >= a.min_agreement - 1e-9 and confidence >= a.min_confidence
            record = {
                "index": i,
                "text_sha256": hashlib.sha256(row["text"].encode()).hexdigest(),
                "teachers": {
                    n: {"label": votes[n], "prob": round(float(probs[n][i, votes[n]]), 6)}
                    for n in names
                },
                "agreement": round(agreement, 6),
                "confidence": round(confidence, 6),
                "verdict": "accepted" if accepted else "refused",
                "label": label if accepted else None,
            }
            records.append(record)
            if accepted:
                train.append(
                    {"text": row["text"], "label": label, "hard": label, "soft": mean[i].tolist()}
                )
            else:
                refused.append(i)
        rng = random.Random(plan.seed)
        kept = (
            sorted(rng.sample(refused, round(a.keep_disagreements * len(refused))))
            if refused
            else []
        )
        for i in kept:
            records[i]["verdict"] = "kept-disagreement"
            records[i]["soft_label"] = [round(float(x), 6) for x in mean[i]]
            train.append(
                {"text": rows[i]["text"], "label": 0, "hard": -100, "soft": mean[i].tolist()}
            )
        return records, train


register(DistillOperator())
