"""int4 weight-only per-group quantization: the packed layout and its error bound, and packages
that load through the evaluation loader and stay close to the float model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studbook.api.operators import OperatorSpec
from studbook_trainer.evaluation.errors import ModelLoadError
from studbook_trainer.evaluation.models import load_classifier, load_language_model
from studbook_trainer.operators import LocalParent, OperatorError, RunContext, get_operator
from studbook_trainer.operators.compress import (
    QUANT_CONFIG,
    Int4Linear,
    QuantizePlan,
    dequantize_int4,
    quantize_int4,
)
from studbook_trainer.operators.training import read_jsonl
from studbook_trainer.task import TRANSLATORS, normalize


def ctx(out: Path, src: Path, datasets: dict[str, Path] | None = None) -> RunContext:
    out.mkdir(parents=True, exist_ok=True)
    return RunContext([LocalParent("src", src)], out, datasets or {}, "cpu")


@pytest.mark.parametrize("cols", [256, 100, 99])
def test_int4_round_trip_is_within_half_a_step_of_every_weight(cols: int) -> None:
    torch.manual_seed(0)
    # Rows four decades apart, one without a negative weight, one all zeros.
    w = torch.randn(24, cols) * torch.logspace(-3, 1, 24)[:, None]
    w[0] = w[0].abs()
    w[1] = 0.0
    packed, scale, zero = quantize_int4(w, 32)
    groups = -(-cols // 32)  # 100 and 99 columns: three groups of 32 and a short one
    assert packed.dtype == torch.uint8 and packed.shape == (24, -(-cols // 2))
    assert scale.dtype == torch.float32 and scale.shape == (24, groups)
    assert zero.dtype == torch.uint8 and zero.shape == (24, groups) and int(zero.max()) <= 15
    restored = dequantize_int4(packed, scale, zero, cols, 32)
    step = scale.repeat_interleave(32, dim=1)[:, :cols]
    # scale / 2, up to float32 rounding of the division and product
    assert ((restored - w).abs() <= step * (0.5 + 1e-5)).all()
    assert (restored[1] == 0).all()
    # Column 2j sits in the low nibble of byte j, column 2j + 1 in the high one.
    q = torch.round(restored / step) + zero.repeat_interleave(32, dim=1)[:, :cols]
    assert torch.equal(packed[:, : cols // 2] & 0x0F, q[:, 0 : cols // 2 * 2 : 2].to(torch.uint8))
    assert torch.equal(packed[:, : cols // 2] >> 4, q[:, 1::2][:, : cols // 2].to(torch.uint8))


def test_int4_linear_is_an_eighth_of_float32_plus_scales_and_zero_points() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(1024, 256)
    quantized = Int4Linear.from_linear(linear, 128)
    stored = sum(b.numel() * b.element_size() for b in quantized.buffers())
    # per 128 weights: 64 bytes of nibbles, a float32 scale and a uint8 zero point
    assert stored / (linear.weight.numel() * 4) == pytest.approx(1 / 8 + 5 / (4 * 128))
    x = torch.randn(8, 1024)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(quantized(x), linear(x), dim=-1)
    assert float(cosine.min()) > 0.99


def test_quantize_int4_is_about_an_eighth_and_still_classifies(
    tmp_path: Path, sentiment_specialist: Path, datasets: dict[str, Path]
) -> None:
    out = tmp_path / "q4"
    plan = QuantizePlan(
        scheme="int4-weight-only",
        granularity="per-group",
        group_size=128,
        skip_modules=("classifier",),
        calibration_dataset="sentiment-test",
    )
    report = get_operator("quantize").run(plan, ctx(out, sentiment_specialist, datasets))
    meta = json.loads((out / QUANT_CONFIG).read_text())
    assert (meta["scheme"], meta["granularity"], meta["group_size"]) == (
        "int4-weight-only",
        "per-group",
        128,
    )
    # MiniLM's widths (384, 1536) are multiples of 128: nibbles, scales and zero points are
    # 0.135 of float32; the float classifier, biases and norms bring the package to 0.14.
    assert report["bytes_after"] < 0.15 * report["bytes_before"]
    assert report["after"]["accuracy"] >= report["before"]["accuracy"] - 0.05
    # The evaluation harness loads it with its int4 layers and counts their bytes.
    loaded = load_classifier(out)
    original = load_classifier(sentiment_specialist)
    assert loaded.size_bytes < 0.15 * original.size_bytes
    texts = [str(r["text"]) for r in read_jsonl(datasets["sentiment-test"])]
    predicted, expected = loaded.predict_proba(texts), original.predict_proba(texts)
    assert (predicted.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert abs(predicted - expected).max() < 0.1  # measured: 0.02


def test_quantize_int4_causal_lm_with_a_group_size_that_does_not_divide(
    tmp_path: Path, llama_a: Path
) -> None:
    out = tmp_path / "q4"
    # Hidden width 32 and FFN width 64: rows end with groups of 8 and 16 columns.
    plan = QuantizePlan(scheme="int4-weight-only", granularity="per-group", group_size=24)
    report = get_operator("quantize").run(plan, ctx(out, llama_a))
    assert report["bytes_after"] < 0.3 * report["bytes_before"]
    quantized = load_language_model(out).model
    original = load_language_model(llama_a).model
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 18, 120, 64, 7]])
    with torch.no_grad():
        got, want = quantized(input_ids=ids).logits, original(input_ids=ids).logits
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert float(cosine.min()) > 0.95


def test_unsupported_combinations_and_tampered_packages_are_refused(
    tmp_path: Path, llama_a: Path
) -> None:
    for scheme, granularity, group_size in (
        ("int8-weight-only", "per-group", 128),
        ("int4-weight-only", "per-channel", None),
        ("int4-weight-only", "per-group", None),
        ("int8-weight-only", "per-channel", 128),
    ):
        with pytest.raises(OperatorError):
            QuantizePlan(scheme=scheme, granularity=granularity, group_size=group_size).check()
    out = tmp_path / "q4"
    plan = QuantizePlan(scheme="int4-weight-only", granularity="per-group", group_size=16)
    get_operator("quantize").run(plan, ctx(out, llama_a))
    meta = json.loads((out / QUANT_CONFIG).read_text())
    for changed, words in (
        ({"group_size": 8}, "checkpoint mismatch"),
        ({"group_size": True}, "not an integer"),
        ({"scheme": "int3-weight-only"}, "unsupported quantization"),
        ({"modules": ["model.nowhere"]}, "which the model lacks"),
    ):
        (out / QUANT_CONFIG).write_text(json.dumps({**meta, **changed}))
        with pytest.raises(ModelLoadError, match=words):
            load_language_model(out)


def test_an_admitted_int4_config_becomes_the_plan_that_runs() -> None:
    config = {"scheme": "int4-weight-only", "granularity": "per-group", "groupSize": 64}
    spec = OperatorSpec.model_validate({"kind": "quantize", "quantize": config})
    plan = TRANSLATORS["quantize"](normalize(spec.to_wire()["quantize"]))
    assert plan == QuantizePlan(scheme="int4-weight-only", granularity="per-group", group_size=64)
    plan.check()
