"""Data loading and a small, deterministic training loop shared by the gradient operators."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from studbook_trainer.operators.base import OperatorError, RunContext, log

TaskKind = Literal["sequence-classification", "causal-lm"]


@dataclass(frozen=True)
class TrainPlan:
    """What every gradient-based operator shares."""

    task: TaskKind
    datasets: tuple[str, ...]
    steps: int
    learning_rate: float
    batch_size: int = 16
    max_seq_length: int = 128
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    num_labels: int | None = None
    seed: int = 0
    freeze: tuple[str, ...] = field(default=())

    def check(self) -> None:
        """Refuse values out of range."""
        if self.task not in ("sequence-classification", "causal-lm"):
            raise OperatorError(f"unknown task {self.task!r}")
        if not self.datasets:
            raise OperatorError("at least one dataset is required")
        if self.steps < 1 or self.batch_size < 1 or self.max_seq_length < 8:
            raise OperatorError("steps, batch_size and max_seq_length must be positive")
        if not 0 < self.learning_rate <= 1:
            raise OperatorError(f"learning_rate {self.learning_rate} is out of range (0, 1]")
        if self.task == "sequence-classification" and (self.num_labels or 0) < 2:
            raise OperatorError("num_labels (>= 2) is required for sequence-classification")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; each needs ``text`` (and ``label`` for classification)."""
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise OperatorError(f"{path}:{n}: not JSON: {e}") from e
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise OperatorError(f"{path}:{n}: every record needs a string 'text'")
                    rows.append(row)
    except UnicodeDecodeError as e:
        raise OperatorError(f"{path}: not UTF-8 text: {e}") from e
    if not rows:
        raise OperatorError(f"{path}: no records")
    return rows


def load_rows(ctx: RunContext, names: Sequence[str], task: TaskKind) -> list[dict[str, Any]]:
    """The records of the named datasets, checked for the task."""
    rows = [r for name in names for r in read_jsonl(ctx.dataset(name))]
    if task == "sequence-classification":
        for r in rows:
            if not isinstance(r.get("label"), int):
                raise OperatorError("sequence-classification records need an integer 'label'")
    return rows


def batches(
    rows: Sequence[dict[str, Any]], batch_size: int, seed: int
) -> Iterator[list[dict[str, Any]]]:
    """An endless, seeded stream of shuffled batches."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [rows[j] for j in order[i : i + batch_size]]


def encode(
    tokenizer: Any, rows: Sequence[dict[str, Any]], task: TaskKind, max_len: int, device: Any
) -> dict[str, torch.Tensor]:
    """Tokenize a batch; labels for classification, next-token labels for causal LMs."""
    enc = tokenizer(
        [r["text"] for r in rows],
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    batch = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    if task == "sequence-classification":
        batch["labels"] = torch.tensor([r["label"] for r in rows], device=device)
    else:
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
    return batch


def ensure_pad_token(tokenizer: Any, model: Any | None = None) -> None:
    """Causal-LM tokenizers often lack a pad token; use EOS."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def train_loop(
    model: torch.nn.Module,
    plan: TrainPlan,
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    device: Any,
    loss_fn: Callable[[Any, dict[str, torch.Tensor], list[dict[str, Any]]], torch.Tensor]
    | None = None,
) -> list[float]:
    """AdamW with linear warmup and decay; returns the loss of every step."""
    torch.manual_seed(plan.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise OperatorError("nothing to train: every parameter is frozen")
    opt = torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=plan.weight_decay)
    warmup = int(plan.warmup_ratio * plan.steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (plan.steps - step) / max(1, plan.steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses: list[float] = []
    stream = batches(rows, plan.batch_size, plan.seed)
    for step in range(plan.steps):
        chunk = next(stream)
        batch = encode(tokenizer, chunk, plan.task, plan.max_seq_length, device)
        if loss_fn is None:
            loss = model(**batch).loss
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = loss_fn(model(**inputs), batch, chunk)
        if not math.isfinite(float(loss.detach())):
            raise OperatorError(f"training diverged at step {step} (loss {float(loss.detach())})")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % max(1, plan.steps // 5) == 0 or step == plan.steps - 1:
            log.info("step %d/%d loss %.4f", step + 1, plan.steps, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    task: TaskKind,
    device: Any,
    max_len: int = 128,
    batch_size: int = 32,
) -> dict[str, float]:
    """Accuracy (classification) or mean token loss and perplexity (causal LM)."""
    model.eval()
    correct, total, loss_sum, tokens = 0, 0, 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = list(rows[i : i + batch_size])
        batch = encode(tokenizer, chunk, task, max_len, device)
        out = model(**batch)
        if task == "sequence-classification":
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            total += len(chunk)
        else:
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss_sum += float(out.loss) * n
            tokens += n
    if task == "sequence-classification":
        return {"accuracy": correct / max(1, total)}
    loss = loss_sum / max(1, tokens)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def save_model(model: Any, tokenizer: Any, out: Path) -> None:
    """Save weights as safetensors with config and tokenizer."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
