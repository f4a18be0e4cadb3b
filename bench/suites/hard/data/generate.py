"""Writes the datasets of the harder two-niche suite: seven classes no keyword separates.

Labels: reviews (the sentiment niche) 0 negative, 1 positive, 2 mixed; headlines (the topic
niche) 3 sports, 4 tech, 5 finance, 6 health.

- A review has one or two clauses, each judging one aspect with an adjective that may be
  negated ("not dull at all" praises, "far from brilliant" pans). Its label is the polarity of
  its clauses after negation: all positive, all negative, or both (mixed). Every sentiment word
  appears under every label, and reviews name things from the headlines' topics.
- A headline's subject, verb and object come from its topic; a trailing phrase names another
  topic and carries sentiment words, so a headline holds words of two topics.

Seeded: the files are the same on every machine and their digests in ``breeding.yaml`` hold.
Run it from anywhere: ``python bench/suites/hard/data/generate.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent

NEGATIVE, POSITIVE, MIXED = 0, 1, 2
SPORTS, TECH, FINANCE, HEALTH = 3, 4, 5, 6

GOOD = ["gripping", "charming", "brilliant", "moving", "clever", "delightful", "sharp", "warm"]
BAD = ["dull", "clumsy", "tedious", "bland", "messy", "forgettable", "sloppy", "lifeless"]
ASPECTS = ["plot", "acting", "soundtrack", "ending", "pacing", "dialogue", "camera work", "cast"]
NEGATIONS = ["not {} at all", "far from {}", "hardly {}", "anything but {}", "never {}"]
THINGS = ["film", "series", "documentary", "novel", "podcast", "play"]

TOPICS = {
    SPORTS: {
        "who": ["striker", "goalkeeper", "coach", "captain", "sprinter", "referee"],
        "verb": ["wins", "loses", "is suspended from", "scores in", "withdraws from"],
        "what": ["league final", "derby", "playoff", "tournament", "cup tie", "relay"],
    },
    TECH: {
        "who": ["chipmaker", "startup", "developer", "cloud provider", "app maker"],
        "verb": ["unveils", "ships", "open-sources", "recalls", "patches"],
        "what": ["processor", "software update", "security patch", "data centre", "browser"],
    },
    FINANCE: {
        "who": ["central bank", "hedge fund", "lender", "broker", "pension fund"],
        "verb": ["raises", "cuts", "freezes", "sells off", "underwrites"],
        "what": ["interest rate", "bond issue", "dividend", "mortgage book", "share buyback"],
    },
    HEALTH: {
        "who": ["hospital", "nurse union", "vaccine maker", "clinic", "health ministry"],
        "verb": ["approves", "trials", "rolls out", "halts", "expands"],
        "what": ["flu vaccine", "cancer screening", "antibiotic", "clinical trial", "ward"],
    },
}
DISTRACTIONS = [
    "days after a {mood} week for the {other}",
    "as the {other} watches a {mood} {other_what}",
    "in a {mood} blow to the {other}",
    "while rumours swirl about a {mood} {other_what}",
]


def _judge(aspect: str, positive: bool, rng: random.Random) -> str:
    """One clause about an aspect, with the given polarity, negated half of the time."""
    negate = rng.random() < 0.5
    adjective = rng.choice(BAD if positive == negate else GOOD)
    phrase = rng.choice(NEGATIONS).format(adjective) if negate else adjective
    return f"the {aspect} was {phrase}"


def review(label: int, rng: random.Random) -> str:
    """One review with the given label."""
    topic = TOPICS[rng.choice(list(TOPICS))]
    subject = f"The {rng.choice(THINGS)} about the {rng.choice(topic['who'])}"
    if label == MIXED:
        polarities = [True, False]
        rng.shuffle(polarities)
    else:
        polarities = [label == POSITIVE] * rng.choice((1, 2))
    aspects = rng.sample(ASPECTS, len(polarities))
    clauses = [_judge(a, p, rng) for a, p in zip(aspects, polarities, strict=True)]
    joiner = " but " if label == MIXED else rng.choice((" and ", ", and "))
    return f"{subject}: {joiner.join(clauses)}."


def headline(label: int, rng: random.Random) -> str:
    """One headline of the given topic, with a phrase about another topic."""
    words = TOPICS[label]
    other = TOPICS[rng.choice([t for t in TOPICS if t != label])]
    who = rng.choice(words["who"])
    distraction = rng.choice(DISTRACTIONS).format(
        mood=rng.choice(GOOD + BAD),
        other=rng.choice(other["who"]),
        other_what=rng.choice(other["what"]),
    )
    main = f"{who[0].upper()}{who[1:]} {rng.choice(words['verb'])} the {rng.choice(words['what'])}"
    return f"{main}, {distraction}."


def pool(
    labels: tuple[int, ...], make: Callable[[int, random.Random], str], n: int, seed: str
) -> list[dict[str, object]]:
    """``n`` distinct examples of one niche, its labels in turn."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, object]] = []
    while len(out) < n:
        label = labels[len(out) % len(labels)]
        text = make(label, rng)
        if text not in seen:
            seen.add(text)
            out.append({"text": text, "label": label})
    return out


SIZES = {"train": 240, "probe": 4, "optimize": 60, "gate": 180, "holdout": 48}
"""Examples per split and niche (the probe: per class)."""


def main() -> None:
    """Split each niche's pool into disjoint files."""
    niches = {
        "reviews": ((NEGATIVE, POSITIVE, MIXED), review),
        "headlines": ((SPORTS, TECH, FINANCE, HEALTH), headline),
    }
    files: dict[str, list[dict[str, object]]] = {"probe": [], "mixed-holdout": []}
    for niche, (labels, make) in niches.items():
        sizes = dict(SIZES, probe=SIZES["probe"] * len(labels))
        rows = pool(labels, make, sum(sizes.values()), niche)
        start = 0
        for split, size in sizes.items():
            part = rows[start : start + size]
            start += size
            if split in ("probe", "holdout"):
                files["probe" if split == "probe" else "mixed-holdout"] += part
            else:
                files[f"{niche}-{split}"] = part
    for name, rows in files.items():
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        (HERE / f"{name}.jsonl").write_text(text)


if __name__ == "__main__":
    main()
