"""Writes the quickstart's datasets: two niches sharing one four-class label space.

Labels: 0 negative, 1 positive (reviews: the sentiment niche), 2 sports, 3 tech (headlines: the
topic niche). Sentences come from templates and word lists, seeded, so the files are the same on
every machine and their digests in the manifests hold. Run it from anywhere:
``python examples/quickstart/data/generate.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent

REVIEW = {
    0: {
        "adj": [
            "dull",
            "tedious",
            "clumsy",
            "awful",
            "disappointing",
            "forgettable",
            "bland",
            "messy",
            "painful",
            "weak",
            "lifeless",
            "sloppy",
        ],
        "verb": ["hated", "regretted", "endured", "dreaded", "resented"],
        "end": [
            "a waste of an evening",
            "I want my money back",
            "I walked out halfway",
            "never again",
            "avoid it",
            "it fell apart quickly",
        ],
    },
    1: {
        "adj": [
            "charming",
            "gripping",
            "delightful",
            "superb",
            "moving",
            "clever",
            "wonderful",
            "warm",
            "brilliant",
            "lovely",
            "sharp",
            "memorable",
        ],
        "verb": ["loved", "enjoyed", "adored", "treasured", "savoured"],
        "end": [
            "worth every penny",
            "I would watch it again",
            "a real treat",
            "highly recommended",
            "it made my week",
            "I told all my friends",
        ],
    },
}
REVIEW_THINGS = [
    "film",
    "movie",
    "series",
    "novel",
    "album",
    "show",
    "play",
    "documentary",
    "sequel",
    "cast",
]
REVIEW_TEMPLATES = [
    "The {thing} was {adj} and {adj2}; {end}.",
    "I {verb} this {thing}, {end}.",
    "A {adj} {thing} with a {adj2} ending.",
    "Honestly the {thing} felt {adj}. {End}.",
    "What a {adj} {thing}: {end}.",
    "We {verb} the {thing}; the story was {adj}.",
]

HEADLINE_WORDS = {
    2: {
        "who": ["striker", "goalkeeper", "coach", "captain", "midfielder", "referee", "sprinter"],
        "what": ["league final", "derby", "playoff", "tournament", "title race", "cup tie"],
        "verb": ["wins", "loses", "dominates", "is suspended from", "scores in", "rescues"],
        "place": ["stadium", "locker room", "training ground", "pitch", "arena"],
    },
    3: {
        "who": ["startup", "chipmaker", "developer", "regulator", "researcher", "cloud provider"],
        "what": ["processor", "software update", "security patch", "data centre", "app", "API"],
        "verb": ["unveils", "delays", "ships", "open-sources", "recalls", "patches"],
        "place": ["lab", "server farm", "app store", "developer conference", "factory"],
    },
}
HEADLINE_TEMPLATES = [
    "{Who} {verb} the {what} after a long week.",
    "Breaking: {who} {verb} the {what}.",
    "At the {place}, the {who} {verb} a {what}.",
    "Why the {who} {verb} the {what}, explained.",
    "{Who} from the {place} {verb} the new {what}.",
    "Report: {who} {verb} the {what} at the {place}.",
]


def review(label: int, rng: random.Random) -> str:
    """One review of the given sentiment."""
    words = REVIEW[label]
    adj, adj2 = rng.sample(words["adj"], 2)
    end = rng.choice(words["end"])
    return rng.choice(REVIEW_TEMPLATES).format(
        thing=rng.choice(REVIEW_THINGS),
        adj=adj,
        adj2=adj2,
        verb=rng.choice(words["verb"]),
        end=end,
        End=end[0].upper() + end[1:],
    )


def headline(label: int, rng: random.Random) -> str:
    """One headline of the given topic."""
    words = HEADLINE_WORDS[label]
    who = rng.choice(words["who"])
    return rng.choice(HEADLINE_TEMPLATES).format(
        who=who,
        Who=who[0].upper() + who[1:],
        verb=rng.choice(words["verb"]),
        what=rng.choice(words["what"]),
        place=rng.choice(words["place"]),
    )


def pool(
    labels: tuple[int, int], make: Callable[[int, random.Random], str], n: int, seed: str
) -> list[dict[str, object]]:
    """``n`` distinct balanced examples of one niche."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, object]] = []
    while len(out) < n:
        label = labels[len(out) % 2]
        text = make(label, rng)
        if text not in seen:
            seen.add(text)
            out.append({"text": text, "label": label})
    return out


def main() -> None:
    """Split each niche's pool into disjoint files."""
    sizes = {"train": 192, "probe": 8, "optimize": 32, "gate": 96, "holdout": 40}
    niches = {
        "sentiment": pool((0, 1), review, sum(sizes.values()), "sentiment"),
        "topic": pool((2, 3), headline, sum(sizes.values()), "topic"),
    }
    splits: dict[str, dict[str, list[dict[str, object]]]] = {}
    for niche, rows in niches.items():
        start = 0
        splits[niche] = {}
        for split, size in sizes.items():
            splits[niche][split] = rows[start : start + size]
            start += size
    files = {
        "sentiment-train": splits["sentiment"]["train"],
        "topic-train": splits["topic"]["train"],
        "probe": splits["sentiment"]["probe"] + splits["topic"]["probe"],
        "sentiment-optimize": splits["sentiment"]["optimize"],
        "topic-optimize": splits["topic"]["optimize"],
        "sentiment-gate": splits["sentiment"]["gate"],
        "topic-gate": splits["topic"]["gate"],
        "mixed-holdout": [
            r
            for pair in zip(splits["sentiment"]["holdout"], splits["topic"]["holdout"], strict=True)
            for r in pair
        ],
    }
    for name, rows in files.items():
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        (HERE / f"{name}.jsonl").write_text(text)


if __name__ == "__main__":
    main()
