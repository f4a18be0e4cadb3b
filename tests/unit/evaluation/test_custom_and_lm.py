"""User-defined tasks, and the causal-LM task on tiny GPT-2 models with a local tokenizer."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from studbook.api.suite import EvaluationSuiteSpec
from studbook_trainer.evaluation import (
    CustomTaskError,
    ModelRef,
    Options,
    bytes_digest,
    evaluate,
)

from . import _fixtures as fx
from .conftest import Data, Models, suite_spec

WORDS = [
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "bird",
    "one",
    "two",
    "three",
    "four",
    "up",
    "down",
    "left",
    "right",
    "good",
    "bad",
]


def _dataset(path: Path, name: str, role: str, task: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "uri": str(path),
        "digest": bytes_digest(path.read_bytes()),
        "role": role,
        "task": task,
        **extra,
    }


def test_a_user_defined_task(data: Data, models: Models, tmp_path: Path) -> None:
    records = [{"input": r["text"], "expect": r["label"]} for r in fx.examples("sentiment", 12, 5)]
    path = fx.write_jsonl(tmp_path / "custom.jsonl", records)
    custom = _dataset(
        path,
        "label-probability",
        "gate",
        "custom",
        customTask="tests.unit.evaluation.custom_tasks:true_label_probability",
    )
    base = suite_spec(data)
    datasets = [d | {"limit": 8} for d in base["datasets"][:2]] + [custom]
    suite = EvaluationSuiteSpec.model_validate(
        base
        | {
            "datasets": datasets,
            "metrics": [
                {"name": "custom", "dataset": "label-probability", "direction": "maximize"},
                {"name": "accuracy", "dataset": "label-probability", "direction": "maximize"},
            ],
            "objective": ["label-probability"],
            "nicheProbes": [],
            "thresholds": [{"metric": "custom", "dataset": "label-probability", "min": 0.5}],
        }
    )
    card = evaluate(
        suite,
        ModelRef("sentiment", models.sentiment),
        suite_name="custom",
        parents=[ModelRef("base", models.base)],
        options=Options(measure_latency=False),
    )
    score = card.metric("label-probability/custom")
    assert score is not None and score.n == 12 and score.value > 0.5
    assert score.ci_low is not None and score.ci_low <= score.value
    assert card.metric("label-probability/accuracy").value == 1.0  # type: ignore[union-attr]
    assert card.verdict == "pass"
    base_parent = card.comparisons[0]
    assert base_parent.name == "base"
    assert base_parent.metrics["label-probability/custom"] < score.value
    assert card.objective is not None and card.objective.net_gain > 0  # type: ignore[operator]

    broken = suite.model_copy(
        update={
            "datasets": [
                *suite.datasets[:2],
                suite.datasets[2].model_copy(
                    update={"custom_task": "tests.unit.evaluation.custom_tasks:not_finite"}
                ),
            ]
        }
    )
    with pytest.raises(CustomTaskError, match="finite"):
        evaluate(broken, ModelRef("sentiment", models.sentiment), suite_name="custom")
    missing = suite.datasets[2].model_copy(
        update={"custom_task": "tests.unit.evaluation.custom_tasks:nowhere"}
    )
    with pytest.raises(CustomTaskError, match="cannot import"):
        evaluate(
            suite.model_copy(update={"datasets": [*suite.datasets[:2], missing]}),
            ModelRef("sentiment", models.sentiment),
            suite_name="custom",
        )


def _tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=128,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(out)
    return out


def _gpt2(out: Path, tokenizer_dir: Path, seed: int) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    tok = _tokenizer(root / "tokenizer")
    return {name: _gpt2(root / name, tok, seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


def test_causal_lm_perplexity_exact_match_and_ensemble(
    lms: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lms["c"])
    model = AutoModelForCausalLM.from_pretrained(lms["c"]).eval()
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(10)]
    # Prompts whose target is the model's own greedy continuation, where re-tokenizing
    # prompt + target gives the same tokens (so the target's length in tokens is unambiguous).
    right: list[dict[str, str]] = []
    while len(right) < 4:
        prompt = " ".join(rng.choice(WORDS) for _ in range(4))
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        new = out[0, ids.shape[1] :].tolist()
        target = tok.decode(new)
        if tok.eos_token_id in new or tok(prompt + target)["input_ids"] != ids[0].tolist() + new:
            continue
        right.append({"prompt": prompt, "target": target})
    wrong = [{"prompt": r["prompt"] + " red", "target": " not this"} for r in right]
    text_path = fx.write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    qa_path = fx.write_jsonl(tmp_path / "qa.jsonl", right + wrong)
    suite = EvaluationSuiteSpec.model_validate(
        {
            "version": "0.1.0",
            "datasets": [
                _dataset(text_path, "text", "gate", "causal-lm"),
                _dataset(qa_path, "qa", "holdout", "causal-lm"),
            ],
            "metrics": [
                {"name": "perplexity", "dataset": "text", "direction": "minimize"},
                {"name": "exact_match", "dataset": "qa", "direction": "maximize"},
                {"name": "perplexity", "dataset": "qa", "direction": "minimize"},
            ],
            "thresholds": [{"metric": "perplexity", "dataset": "text", "max": 1000}],
            "bootstrap": {"samples": 100},
        }
    )
    card = evaluate(
        suite,
        ModelRef("c", lms["c"]),
        suite_name="lm",
        parents=[ModelRef("a", lms["a"]), ModelRef("b", lms["b"])],
        options=Options(batch_size=4, measure_latency=False),
    )
    # Perplexity as transformers computes it: token-weighted mean of the shifted loss.
    nll = tokens = 0.0
    with torch.inference_mode():
        for t in texts:
            ids = tok(t, return_tensors="pt")["input_ids"]
            n = ids.shape[1] - 1
            nll += float(model(ids, labels=ids).loss) * n
            tokens += n
    ppl = card.metric("text/perplexity")
    assert ppl is not None and ppl.value == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert ppl.direction == "minimize" and ppl.ci_low is not None
    exact = card.metric("qa/exact_match")
    assert exact is not None and (exact.value, exact.n) == (0.5, 8)
    by_name = {c.name: c.metrics for c in card.comparisons}
    assert list(by_name) == ["a", "b", "ensemble"]
    parents = [by_name["a"]["text/perplexity"], by_name["b"]["text/perplexity"]]
    # A mixture is never less likely than its worse member.
    assert by_name["ensemble"]["text/perplexity"] <= max(parents) * (1 + 1e-9)
    # The objective is every gate dataset's first metric, negated since lower is better.
    assert card.objective is not None and card.objective.metrics == ["text/perplexity"]
    assert card.objective.value == pytest.approx(-ppl.value)
    assert card.objective.best_parent_value == pytest.approx(-min(parents))
    assert card.calibration == [] and card.verdict == "pass"
