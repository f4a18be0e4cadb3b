"""The quickstart, as ``make demo`` runs it: the README's main command, end to end on this CPU.

A copy of ``examples/quickstart`` (with its founder linked in, as the Makefile does) is bred,
evaluated and signed by ``studbook breed``, then reported by ``studbook report``. Nothing is
mocked: MiniLM, LoRA training, merges, distillation, quantization, the harness and signing all
run for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from studbook.api.scorecard import Scorecard
from studbook.artifacts import Store, TrustedKey, TrustPolicy, Verifier
from tests.unit.evaluation import _fixtures as fx

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart"
SPECIALISTS = ("minilm-sentiment", "minilm-topic")
MERGES = ("minilm-linear", "minilm-ties", "minilm-dare")
EVERY = ("minilm-base", "minilm-probe", *SPECIALISTS, *MERGES)
EVERY += ("minilm-ties-distilled", "minilm-ties-int8")


def _studbook(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "studbook", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


class Quickstart:
    """One bred quickstart workspace and what its runs printed."""

    def __init__(self, root: Path) -> None:
        self.manifests = root / "quickstart"
        shutil.copytree(QUICKSTART, self.manifests, ignore=shutil.ignore_patterns("founder"))
        (self.manifests / "founder").mkdir()
        (self.manifests / "founder" / "all-minilm-l6-v2").symlink_to(fx.minilm_dir())
        self.workspace = root / "workspace"
        started = time.monotonic()
        self.first = _studbook("breed", str(self.manifests), "--workspace", str(self.workspace))
        self.first_seconds = time.monotonic() - started
        self.registry: dict[str, Any] = json.loads((self.workspace / "registry.json").read_text())
        self.store = Store.open(self.workspace / "store")
        private = serialization.load_pem_private_key(
            (self.workspace / "signing" / "key.pem").read_bytes(), password=None
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.verifier = Verifier(self.store, TrustPolicy((TrustedKey(public, "workspace"),)))

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.registry[name]["status"]
        return status

    def scorecard(self, name: str) -> Scorecard:
        """The scorecard stored beside a descendant's artifact, its signature verified."""
        cards = self.verifier.verify_scorecards(self.status(name)["artifact"]["id"])
        assert len(cards) == 1, cards
        return Scorecard.model_validate(cards[0].data)

    @staticmethod
    def objective_of(metrics: dict[str, float]) -> float:
        return (metrics["sentiment-gate/accuracy"] + metrics["topic-gate/accuracy"]) / 2


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    yield Quickstart(tmp_path_factory.mktemp("quickstart"))


def test_every_descendant_is_bred_evaluated_and_signed(quickstart: Quickstart) -> None:
    print(f"quickstart bred in {quickstart.first_seconds:.0f} s")
    assert set(quickstart.registry) == set(EVERY)
    for name in EVERY:
        status = quickstart.status(name)
        assert status["phase"] == "Ready", (name, status)
        verified = quickstart.verifier.verify(status["artifact"]["id"])
        assert verified.id == status["artifact"]["id"] and verified.signer.kind == "key"
        card = quickstart.scorecard(name)
        assert card.subject == status["artifact"]["id"]
        assert {m.key for m in card.metrics} >= {"sentiment-gate/accuracy", "topic-gate/accuracy"}
    assert "minilm-ties" in quickstart.first.stdout and "signing key:" in quickstart.first.stdout


def test_the_founder_encoder_is_scored_through_a_probe(quickstart: Quickstart) -> None:
    card = quickstart.scorecard("minilm-base")
    assert card.probed == ["minilm-base"]
    values = {m.key: m.value for m in card.metrics}
    # Fitted on the suite's optimize data of both niches, the probe beats chance on both.
    assert values["sentiment-gate/accuracy"] > 0.6 and values["topic-gate/accuracy"] > 0.6


def test_specialists_gain_their_niche_and_forget_the_other(quickstart: Quickstart) -> None:
    probe = {m.key: m.value for m in quickstart.scorecard("minilm-probe").metrics}
    for name, own, other in (
        ("minilm-sentiment", "sentiment", "topic"),
        ("minilm-topic", "topic", "sentiment"),
    ):
        card = quickstart.scorecard(name)
        values = {m.key: m.value for m in card.metrics}
        assert values[f"{own}-gate/accuracy"] > probe[f"{own}-gate/accuracy"], name
        niche = next(n for n in card.niches if n.probe == other)
        assert niche.parent == "minilm-probe" and niche.regression > 0.3, niche
        # The policy archives a specialist that forgets its parent's niche, with the reason.
        status = quickstart.status(name)
        assert status["stage"] == "archived"
        assert f"niche {other} of parent minilm-probe" in status["message"]


def test_the_best_merge_beats_each_specialist_on_the_combined_suite(
    quickstart: Quickstart,
) -> None:
    specialists = {
        name: quickstart.objective_of({m.key: m.value for m in quickstart.scorecard(name).metrics})
        for name in SPECIALISTS
    }
    merges = {
        name: quickstart.objective_of({m.key: m.value for m in quickstart.scorecard(name).metrics})
        for name in MERGES
    }
    best = max(merges, key=lambda n: merges[n])
    assert all(merges[best] > value for value in specialists.values()), (merges, specialists)
    card = quickstart.scorecard(best)
    # In the same run, the merge was compared with its parents and their output ensemble.
    roles = {(c.role, c.name) for c in card.comparisons}
    assert {("parent", s) for s in SPECIALISTS} <= roles and ("ensemble", "ensemble") in roles
    assert ("baseline", "uniform-merge") in roles
    assert quickstart.status(best)["stage"] == "candidate"

    out = quickstart.workspace / "report"
    _studbook("report", "--workspace", str(quickstart.workspace), "--out", str(out))
    page = (out / "report.md").read_text()
    assert f"{best} beats" in page, page[:2000]
    assert "| minilm-base † |" in page and "scored through a linear probe" in page


def test_compressed_descendants_are_smaller(quickstart: Quickstart) -> None:
    teacher = quickstart.scorecard("minilm-ties").profile
    distilled = quickstart.scorecard("minilm-ties-distilled").profile
    quantized = quickstart.scorecard("minilm-ties-int8").profile
    assert teacher and distilled and quantized
    assert distilled.parameters < teacher.parameters
    assert quantized.size_bytes < teacher.size_bytes / 2
    values = {m.key: m.value for m in quickstart.scorecard("minilm-ties-int8").metrics}
    assert quickstart.objective_of(values) > 0.9


def test_a_second_run_reuses_every_artifact(quickstart: Quickstart) -> None:
    runs = sorted(p.name for p in (quickstart.workspace / "store" / "runs").rglob("*"))
    started = time.monotonic()
    second = _studbook("breed", str(quickstart.manifests), "--workspace", str(quickstart.workspace))
    seconds = time.monotonic() - started
    print(f"second run: {seconds:.1f} s (first {quickstart.first_seconds:.0f} s)")
    assert second.stdout.count("reused") == len(EVERY), second.stdout
    assert sorted(p.name for p in (quickstart.workspace / "store" / "runs").rglob("*")) == runs


def test_a_second_workspace_breeds_every_artifact_to_the_same_id(
    quickstart: Quickstart, tmp_path: Path
) -> None:
    # Another directory, another store and another signing key: only the inputs are the same,
    # so every artifact (founder, trained, merged, distilled and quantized) must be too.
    again = Quickstart(tmp_path)
    assert again.manifests != quickstart.manifests
    ids = {name: quickstart.status(name)["artifact"]["id"] for name in EVERY}
    assert {name: again.status(name)["artifact"]["id"] for name in EVERY} == ids
