"""Merging two LoRA specialists trained on different tasks gives a model for both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from studbook_trainer.operators import LocalParent, RunContext, get_operator
from studbook_trainer.operators.lora import LoraPlan
from studbook_trainer.operators.simple import MergeOperatorPlan
from studbook_trainer.operators.training import evaluate

from ._models import sentiment_rows, topic_rows, write_jsonl


def accuracy(model_dir: Path, rows: list[dict[str, object]]) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return evaluate(model, tok, rows, "sequence-classification", "cpu")["accuracy"]


@pytest.mark.slow
def test_merged_specialists_beat_each_specialist_on_the_other_task(
    tmp_path: Path, minilm: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # one label space for both tasks: sentiment 0/1, topic 2/3
    data = {
        "sentiment": write_jsonl(tmp_path / "sentiment.jsonl", sentiment_rows(192, seed=11)),
        "topic": write_jsonl(
            tmp_path / "topic.jsonl",
            [{**r, "label": int(r["label"]) + 2} for r in topic_rows(192, seed=12)],  # type: ignore[call-overload]
        ),
    }
    test_a = sentiment_rows(96, seed=13)
    test_b = [{**r, "label": int(r["label"]) + 2} for r in topic_rows(96, seed=14)]  # type: ignore[call-overload]

    base = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=4).save_pretrained(base)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(base)

    specialists = {}
    for task in ("sentiment", "topic"):
        out = tmp_path / task
        out.mkdir()
        plan = LoraPlan(
            task="sequence-classification",
            datasets=(task,),
            steps=30,
            learning_rate=2e-3,
            batch_size=16,
            num_labels=4,
            rank=8,
            alpha=16,
            target_modules=("query", "value"),
            merge_into_base=True,
        )
        get_operator("lora").run(plan, RunContext([LocalParent("base", base)], out, data, "cpu"))
        specialists[task] = out

    merged = tmp_path / "merged"
    merged.mkdir()
    plan_m = MergeOperatorPlan(method="task_arithmetic", weights={}, base="base")
    parents = [LocalParent("base", base)] + [LocalParent(k, v) for k, v in specialists.items()]
    get_operator("merge").run(plan_m, RunContext(parents, merged, {}, "cpu"))

    a_on_a, a_on_b = (
        accuracy(specialists["sentiment"], test_a),
        accuracy(specialists["sentiment"], test_b),
    )
    b_on_a, b_on_b = accuracy(specialists["topic"], test_a), accuracy(specialists["topic"], test_b)
    m_on_a, m_on_b = accuracy(merged, test_a), accuracy(merged, test_b)
    assert a_on_a >= 0.85 and b_on_b >= 0.85, (a_on_a, b_on_b)
    # on the two tasks together, the merge beats each specialist on the other's task
    assert m_on_b > a_on_b and m_on_a > b_on_a, (m_on_a, m_on_b, a_on_b, b_on_a)
    both = (m_on_a + m_on_b) / 2
    assert both > (a_on_a + a_on_b) / 2 and both > (b_on_a + b_on_b) / 2
