"""Every operator on real small models; every output loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studbook_trainer.evaluation.models import load_classifier
from studbook_trainer.operators import (
    OPERATORS,
    LocalParent,
    OperatorError,
    RunContext,
    get_operator,
)
from studbook_trainer.operators.compress import PrunePlan, QuantizePlan, load_quantized
from studbook_trainer.operators.distill import RECORD, AgreementPlan, DistillPlan
from studbook_trainer.operators.lora import CompositionPlan, LoraPlan
from studbook_trainer.operators.simple import (
    FinetunePlan,
    ImportPlan,
    MergeOperatorPlan,
    directory_id,
)
from studbook_trainer.operators.training import evaluate, read_jsonl


def ctx(out: Path, datasets: dict[str, Path] | None = None, **parents: Path) -> RunContext:
    out.mkdir(parents=True, exist_ok=True)
    return RunContext([LocalParent(n, p) for n, p in parents.items()], out, datasets or {}, "cpu")


def accuracy(model_dir: Path, rows_path: Path) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return evaluate(model, tok, read_jsonl(rows_path), "sequence-classification", "cpu")["accuracy"]


def test_registry_names_every_operator_with_a_reference() -> None:
    assert set(OPERATORS) == {"import", "finetune", "lora", "distill", "quantize", "prune", "merge"}
    assert all(op.reference.startswith("https://") for op in OPERATORS.values())
    with pytest.raises(OperatorError, match="unknown operator 'crossover'"):
        get_operator("crossover")


def test_import_checks_the_expected_digest(tmp_path: Path, llama_a: Path) -> None:
    digest = directory_id(llama_a)
    report = get_operator("import").run(
        ImportPlan(f"file://{llama_a}", digest), ctx(tmp_path / "ok")
    )
    assert report["digest"] == digest
    assert directory_id(tmp_path / "ok") == digest
    get_operator("import").run(ImportPlan(str(llama_a), digest), ctx(tmp_path / "local"))
    wrong = "sha256:" + "0" * 64
    with pytest.raises(OperatorError, match="expected sha256:0000"):
        get_operator("import").run(ImportPlan(str(llama_a), wrong), ctx(tmp_path / "bad"))
    with pytest.raises(OperatorError, match="does not exist"):
        get_operator("import").run(ImportPlan(str(tmp_path / "nope"), None), ctx(tmp_path / "x"))


def test_finetune_classification_learns_and_loads(
    sentiment_specialist: Path, minilm: Path, datasets: dict[str, Path]
) -> None:
    assert accuracy(sentiment_specialist, datasets["sentiment-test"]) >= 0.9


def test_finetune_causal_lm_lowers_the_loss(
    tmp_path: Path, llama_a: Path, datasets: dict[str, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    plan = FinetunePlan(
        task="causal-lm", datasets=("counting",), steps=15, learning_rate=3e-3, batch_size=16
    )
    report = get_operator("finetune").run(plan, ctx(tmp_path / "out", datasets, base=llama_a))
    assert report["after"]["loss"] < report["before"]["loss"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 7, 9]])).logits).all()


def test_lora_specialist_beats_its_base(
    tmp_path: Path, minilm: Path, datasets: dict[str, Path]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plan = LoraPlan(
        task="sequence-classification",
        datasets=("topic",),
        steps=30,
        learning_rate=2e-3,
        batch_size=16,
        num_labels=2,
        rank=8,
        alpha=16,
        target_modules=("query", "value"),
    )
    report = get_operator("lora").run(plan, ctx(tmp_path / "adapter", datasets, minilm=minilm))
    assert report["output"] == "adapter" and report["trainable"] < report["total"] / 10
    out = tmp_path / "adapter"
    assert (out / "adapter_config.json").is_file()
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    tok = AutoTokenizer.from_pretrained(minilm)
    rows = read_jsonl(datasets["topic-test"])
    base_acc = evaluate(base, tok, rows, "sequence-classification", "cpu")["accuracy"]
    model = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2), out
    )
    acc = evaluate(model, tok, rows, "sequence-classification", "cpu")["accuracy"]
    assert acc >= 0.85 and acc > base_acc + 0.2


def test_lora_causal_merge_into_base_and_composition(
    tmp_path: Path, llama_a: Path, datasets: dict[str, Path]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = dict(
        task="causal-lm",
        datasets=("counting",),
        steps=6,
        learning_rate=5e-3,
        batch_size=8,
        rank=4,
        alpha=8,
        target_modules=("q_proj", "v_proj"),
    )
    merged = get_operator("lora").run(
        LoraPlan(**common, merge_into_base=True), ctx(tmp_path / "merged", datasets, base=llama_a)
    )
    assert merged["output"] == "merged-model" and merged["after"]["loss"] < merged["before"]["loss"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()

    a1 = tmp_path / "a1"
    a2 = tmp_path / "a2"
    get_operator("lora").run(LoraPlan(**common, seed=1), ctx(a1, datasets, base=llama_a))
    get_operator("lora").run(LoraPlan(**common, seed=2), ctx(a2, datasets, base=llama_a))
    for method in ("linear", "cat", "svd"):
        out = tmp_path / f"composed-{method}"
        plan = LoraPlan(**common, compose=CompositionPlan(method, (0.5, 0.5)))
        report = get_operator("lora").run(plan, ctx(out, datasets, base=llama_a, a1=a1, a2=a2))
        assert report["combination"] == method
        composed = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_a), out)
        logits = composed(input_ids=torch.tensor([[1, 2, 3]])).logits
        assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_distilled_student_gets_close_to_its_teachers(
    tmp_path: Path, sentiment_specialist: Path, minilm: Path, datasets: dict[str, Path]
) -> None:
    # a second, independently trained teacher
    teacher2 = tmp_path / "teacher2"
    get_operator("finetune").run(
        FinetunePlan(
            task="sequence-classification",
            datasets=("sentiment",),
            steps=24,
            learning_rate=1e-4,
            batch_size=16,
            num_labels=2,
            seed=5,
        ),
        ctx(teacher2, datasets, minilm=minilm),
    )
    plan = DistillPlan(
        task="sequence-classification",
        datasets=("sentiment",),
        steps=40,
        learning_rate=2e-4,
        batch_size=16,
        num_labels=2,
        student_layers=2,
        temperature=2.0,
        alpha=0.5,
        agreement=AgreementPlan(min_agreement=1.0, min_confidence=0.6, keep_disagreements=0.5),
    )
    out = tmp_path / "student"
    report = get_operator("distill").run(
        plan, ctx(out, datasets, t1=sentiment_specialist, t2=teacher2)
    )
    records = [json.loads(line) for line in (out / RECORD).read_text().splitlines()]
    assert len(records) == 192
    for r in records:
        assert set(r["teachers"]) == {"t1", "t2"}
        assert r["verdict"] in ("accepted", "refused", "kept-disagreement")
        if r["verdict"] == "accepted":
            assert {v["label"] for v in r["teachers"].values()} == {r["label"]}
    assert report["verdicts"]["accepted"] > 100
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    teacher_acc = accuracy(sentiment_specialist, datasets["sentiment-test"])
    student_acc = accuracy(out, datasets["sentiment-test"])
    assert student_acc >= teacher_acc - 0.1, (student_acc, teacher_acc)


def test_quantize_int8_is_smaller_and_still_classifies(
    tmp_path: Path, sentiment_specialist: Path, datasets: dict[str, Path]
) -> None:
    out = tmp_path / "q"
    plan = QuantizePlan(skip_modules=("classifier",), calibration_dataset="sentiment-test")
    report = get_operator("quantize").run(plan, ctx(out, datasets, src=sentiment_specialist))
    assert report["bytes_after"] < 0.5 * report["bytes_before"]
    assert report["after"]["accuracy"] >= report["before"]["accuracy"] - 0.05
    model, tok = load_quantized(out)
    rows = read_jsonl(datasets["sentiment-test"])
    acc = evaluate(model, tok, rows, "sequence-classification", "cpu")["accuracy"]
    assert acc == pytest.approx(report["after"]["accuracy"])
    # The evaluation harness loads it with its int8 layers, and counts their bytes.
    loaded = load_classifier(out)
    original = load_classifier(sentiment_specialist)
    assert loaded.size_bytes < 0.5 * original.size_bytes
    texts = [r["text"] for r in rows]
    predicted = loaded.predict_proba(texts).argmax(1)
    assert (predicted == original.predict_proba(texts).argmax(1)).mean() >= 0.95


def test_quantize_causal_lm_loads_and_runs(tmp_path: Path, llama_a: Path) -> None:
    out = tmp_path / "q"
    report = get_operator("quantize").run(QuantizePlan(), ctx(out, src=llama_a))
    assert report["bytes_after"] < report["bytes_before"]
    model, _ = load_quantized(out)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_prune_magnitude_reaches_the_target_sparsity(
    tmp_path: Path, sentiment_specialist: Path, datasets: dict[str, Path]
) -> None:
    plan = PrunePlan(
        "magnitude", 0.3, skip_modules=("classifier",), calibration_dataset="sentiment-test"
    )
    report = get_operator("prune").run(
        plan, ctx(tmp_path / "p", datasets, src=sentiment_specialist)
    )
    assert report["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert report["after"]["accuracy"] >= 0.8
    assert accuracy(tmp_path / "p", datasets["sentiment-test"]) == pytest.approx(
        report["after"]["accuracy"]
    )


def test_prune_ffn_rows_makes_a_smaller_model(tmp_path: Path, llama_a: Path) -> None:
    from transformers import AutoModelForCausalLM

    report = get_operator("prune").run(PrunePlan("ffn-rows", 0.5), ctx(tmp_path / "p", src=llama_a))
    assert report["ffn_width_after"] == report["ffn_width_before"] // 2
    assert report["bytes_after"] < report["bytes_before"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    assert model.config.intermediate_size == report["ffn_width_after"]
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_prune_attention_heads(
    tmp_path: Path, sentiment_specialist: Path, datasets: dict[str, Path]
) -> None:
    plan = PrunePlan("attention-heads", 0.25, calibration_dataset="sentiment-test")
    report = get_operator("prune").run(
        plan, ctx(tmp_path / "p", datasets, src=sentiment_specialist)
    )
    assert report["heads_removed"] == 6 * 3
    assert accuracy(tmp_path / "p", datasets["sentiment-test"]) == pytest.approx(
        report["after"]["accuracy"]
    )


def test_merge_operator_uses_named_parents(tmp_path: Path, llama_a: Path, llama_b: Path) -> None:
    from transformers import AutoModelForCausalLM

    plan = MergeOperatorPlan(method="linear", weights={"a": 1.0, "b": 3.0})
    report = get_operator("merge").run(plan, ctx(tmp_path / "m", a=llama_a, b=llama_b))
    assert report["method"] == "linear"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    with pytest.raises(OperatorError, match="unknown parents"):
        get_operator("merge").run(
            MergeOperatorPlan(method="linear", weights={"zz": 1.0}), ctx(tmp_path / "x", a=llama_a)
        )
