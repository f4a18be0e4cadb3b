"""The end-to-end population: a MiniLM founder, two LoRA specialists and their TIES merge.

Shared by the end-to-end tests that run it against an operator process and against the operator
the chart installs. Its inputs (founder files, datasets) are written into the artifact store's
volume, the only one a step pod mounts; ``Inputs`` knows where the pods see them.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from studbook_trainer.evaluation import bytes_digest
from studbook_trainer.operators.simple import directory_id
from tests.builders import Body
from tests.operator_fixtures import apply
from tests.unit.evaluation import _fixtures as fx

LOCAL_NODE = {
    "nodeSelector": {"studbook.dev/local-runner": "true"},
    "tolerations": [
        {
            "key": "studbook.dev/local-runner",
            "operator": "Equal",
            "value": "true",
            "effect": "NoSchedule",
        }
    ],
}
RESOURCES = {**LOCAL_NODE, "backoffLimit": 0, "cpu": "1"}
"""Each step on the runner's node, with room beside it for an operator pod there."""
NAMES = ["minilm-base", "minilm-sentiment", "minilm-topic", "minilm-sentiment-topic-ties"]
"""The population, parents first."""


@dataclass(frozen=True)
class Inputs:
    """A directory of inputs inside the store's volume: ``host`` here, ``mount`` in the pods."""

    host: Path
    mount: str

    @classmethod
    def in_store(cls, store: Path, mount: str | None = None) -> Inputs:
        """Inputs under ``store``, which pods mount at ``mount`` (default: the same path)."""
        host = store / "inputs"
        host.mkdir(exist_ok=True)
        return cls(host, f"{mount or store}/inputs")

    def seen(self, path: Path) -> str:
        """Where a step pod sees a file written under ``host``."""
        return f"{self.mount}/{path.relative_to(self.host)}"


def share(path: Path) -> Path:
    """Make written inputs readable by the step pods' user, as files put on a shared volume."""
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def suite(inputs: Inputs) -> dict[str, Any]:
    """The sentiment-topic suite on real data."""
    sizes = {"gate": 24, "holdout": 12, "optimize": 12}
    sentiment, topic = fx.splits("sentiment", sizes), fx.splits("topic", sizes)
    at = inputs.host
    files = {
        "sentiment-optimize": fx.write_jsonl(at / "s-opt.jsonl", sentiment["optimize"]),
        "sentiment-gate": fx.write_jsonl(at / "s-gate.jsonl", sentiment["gate"]),
        "topic-optimize": fx.write_jsonl(at / "t-opt.jsonl", topic["optimize"]),
        "topic-gate": fx.write_jsonl(at / "t-gate.jsonl", topic["gate"]),
        "mixed-holdout": fx.write_jsonl(
            at / "holdout.jsonl", sentiment["holdout"] + topic["holdout"]
        ),
    }
    body = Body.of("suite")
    for i, entry in enumerate(body.manifest["spec"]["datasets"]):
        path = share(files[entry["name"]])
        body.set(f"spec.datasets.{i}.uri", inputs.seen(path))
        body.set(f"spec.datasets.{i}.digest", bytes_digest(path.read_bytes()))
    body.set("spec.bootstrap", {"samples": 100, "confidence": 0.95})
    # A freshly initialised head scores by chance: the founder passes the suite's own bounds.
    body.set("spec.thresholds", [{"metric": "ece", "dataset": "sentiment-gate", "max": 1.0}])
    return body.manifest


def key_signer(public_key: str) -> dict[str, Any]:
    """A policy's trusted signer of one public key (PEM)."""
    return {"name": "e2e-key", "kind": "key", "key": {"publicKey": public_key}}


def governance_and_founder(
    kube: client.ApiClient, namespace: str, signer: dict[str, Any], inputs: Inputs
) -> Body:
    """Apply a policy trusting ``signer`` and a suite on real data; return the founder's
    manifest, a MiniLM classifier imported on the local runner."""
    founder_dir = share(fx.base_classifier(inputs.host / "founder"))
    policy = (
        Body.of("policy")
        .set(
            "spec.trustedSigners",
            [signer],
        )
        # The local runner's node, as the policy allows descendants to ask for it.
        .set(
            "spec.scheduling",
            {
                "allowedNodeSelector": {k: [v] for k, v in LOCAL_NODE["nodeSelector"].items()},
                "allowedTolerations": LOCAL_NODE["tolerations"],
            },
        )
    )
    apply(kube, namespace, policy.set("spec.evaluationGates", {}).manifest)
    apply(kube, namespace, suite(inputs))
    return (
        Body.of("founder-import")
        .set("spec.operator.import.uri", inputs.seen(founder_dir))
        .set("spec.operator.import.digest", directory_id(founder_dir))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .set("spec.resources", RESOURCES)
    )


def training_data(inputs: Inputs, niche: str) -> dict[str, Any]:
    """A train split with integer labels (the trainer's format), declared as spec.data."""
    records = [
        {"text": r["text"], "label": fx.LABELS.index(r["label"])}
        for r in fx.splits(niche, {"train": 64, "gate": 24, "holdout": 12, "optimize": 12})["train"]
    ]
    path = share(fx.write_jsonl(inputs.host / f"{niche}-train.jsonl", records))
    return {
        "name": f"{niche}-train",
        "uri": inputs.seen(path),
        "digest": bytes_digest(path.read_bytes()),
    }


def lora(name: str, niche: str, data: dict[str, Any]) -> dict[str, Any]:
    """A LoRA specialist of the founder for one niche."""
    return (
        Body.of("lora-specialist")
        .set("metadata.name", name)
        .set("spec.data", [{**data, "role": "train"}])
        .set(
            "spec.operator.lora",
            {
                "task": "sequence-classification",
                "numLabels": len(fx.LABELS),
                "datasets": [data["name"]],
                "rank": 8,
                "alpha": 16,
                "targetModules": ["query", "value"],
                "steps": 24,
                "learningRate": 0.001,
                "batchSize": 16,
                "maxSeqLength": 32,
                "mergeIntoBase": True,
                "seed": 1,
            },
        )
        .set("spec.niche.taxonomy", [f"classification/{niche}"])
        .set("spec.resources", RESOURCES)
        .manifest
    )


def apply_family(
    kube: client.ApiClient, namespace: str, signer: dict[str, Any], inputs: Inputs
) -> None:
    """Apply the whole population, children first: each waits for its parents to be Ready, as
    with `kubectl apply -f dir/`."""
    founder = governance_and_founder(kube, namespace, signer, inputs)
    merge = (
        Body.of("ties-merge")
        .set("spec.operator.merge.overrides", [])
        .set("spec.resources", RESOURCES)
    )
    apply(kube, namespace, merge.manifest)
    apply(
        kube, namespace, lora("minilm-sentiment", "sentiment", training_data(inputs, "sentiment"))
    )
    apply(kube, namespace, lora("minilm-topic", "topic", training_data(inputs, "topic")))
    apply(kube, namespace, founder.manifest)


def check_family(statuses: list[dict[str, Any]], signer: str = "key:") -> None:
    """Every member Ready, signed (by a signer whose name starts with ``signer``) and passing;
    lineage and gains as bred."""
    for name, status in zip(NAMES, statuses, strict=True):
        assert status["phase"] == "Ready", (name, status.get("message"))
        assert status["artifact"]["signer"].startswith(signer), (name, status["artifact"])
        assert status["scorecard"]["verdict"] == "pass", name
    base, sentiment, topic, merged = statuses
    assert sentiment["lineage"]["operator"] == "lora"
    assert sentiment["lineage"]["parentIds"] == [base["artifact"]["id"]]
    assert merged["lineage"]["operator"] == "merge"
    assert merged["lineage"]["parentIds"] == [
        base["artifact"]["id"],
        sentiment["artifact"]["id"],
        topic["artifact"]["id"],
    ]
    gain = sentiment["scorecard"]["metrics"]["sentiment-gate/accuracy"]
    assert gain > base["scorecard"]["metrics"]["sentiment-gate/accuracy"]


def verify(artifact_id: str, store: Path, *trust: str) -> None:
    """`studbook verify` of an artifact, the way a user checks one, trusting what the options
    ``trust`` name (``--trusted-key PEM``, or a keyless identity)."""
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "studbook",
            "verify",
            artifact_id,
            "--store",
            str(store),
            *trust,
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
