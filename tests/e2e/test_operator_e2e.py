"""End to end: a founder applied as a manifest is imported, evaluated and signed by real Jobs.

The operator runs against the real control plane; its Jobs land on the local pod runner's node,
which runs them as containers of the trainer image that `make images` built (no network, a
read-only root, non-root): the trainer imports and seals the founder, the harness evaluates it
on a real suite, and the operator signs artifact and scorecard in its own process. The inputs
(founder files, datasets) lie in the artifact store's volume, the only one a step pod mounts.
``studbook verify`` then checks the artifact the way a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from studbook_trainer import __version__
from studbook_trainer.evaluation import bytes_digest
from studbook_trainer.operators.simple import directory_id
from tests.builders import Body
from tests.cluster.images import image
from tests.keys import ec_key
from tests.operator_fixtures import OperatorProcess, apply, descendant_status, wait_for
from tests.unit.evaluation import _fixtures as fx

pytestmark = pytest.mark.cluster

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


def _suite(tmp_path: Path) -> dict[str, Any]:
    sizes = {"gate": 24, "holdout": 12, "optimize": 12}
    sentiment, topic = fx.splits("sentiment", sizes), fx.splits("topic", sizes)
    files = {
        "sentiment-optimize": fx.write_jsonl(tmp_path / "s-opt.jsonl", sentiment["optimize"]),
        "sentiment-gate": fx.write_jsonl(tmp_path / "s-gate.jsonl", sentiment["gate"]),
        "topic-gate": fx.write_jsonl(tmp_path / "t-gate.jsonl", topic["gate"]),
        "mixed-holdout": fx.write_jsonl(
            tmp_path / "holdout.jsonl", sentiment["holdout"] + topic["holdout"]
        ),
    }
    body = Body.of("suite")
    for i, entry in enumerate(body.manifest["spec"]["datasets"]):
        path = _share(files[entry["name"]])
        body.set(f"spec.datasets.{i}.uri", path.as_uri())
        body.set(f"spec.datasets.{i}.digest", bytes_digest(path.read_bytes()))
    body.set("spec.bootstrap", {"samples": 100, "confidence": 0.95})
    # A freshly initialised head scores by chance: the founder passes the suite's own bounds.
    body.set("spec.thresholds", [{"metric": "ece", "dataset": "sentiment-gate", "max": 1.0}])
    return body.manifest


@pytest.fixture
def operator(idle_operator: OperatorProcess, tmp_path: Path) -> OperatorProcess:
    """The operator with a fresh signing key of its own: it signs in its process, and no Secret
    in the tenant namespace holds the key."""
    public = ec_key(tmp_path / "signing" / "key.pem")
    (tmp_path / "trusted.pem").write_text(public)
    idle_operator.env["STUDBOOK_SIGNING_DIR"] = str(tmp_path / "signing")
    idle_operator.start()
    return idle_operator


def _no_signing_in(kube: client.ApiClient, namespace: str) -> None:
    """Nothing in the tenant namespace signs or holds signing material."""
    assert client.CoreV1Api(kube).list_namespaced_secret(namespace).items == []
    jobs = client.BatchV1Api(kube).list_namespaced_job(namespace).items
    assert jobs and not any("-sign-" in j.metadata.name for j in jobs)


def _inputs(operator: OperatorProcess) -> Path:
    """Where the test's inputs go: inside the store's volume, which step pods mount."""
    inputs = operator.store / "inputs"
    inputs.mkdir(exist_ok=True)
    return inputs


def _share(path: Path) -> Path:
    """Make written inputs readable by the step pods' user, as files put on a shared volume."""
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def _governance_and_founder(
    kube: client.ApiClient, namespace: str, tmp_path: Path, inputs: Path
) -> Body:
    """Apply a policy trusting the operator's signing key and a suite on real data; return the
    founder's manifest, a MiniLM classifier imported on the local runner."""
    founder_dir = _share(fx.base_classifier(inputs / "founder"))
    public = (tmp_path / "trusted.pem").read_text()
    policy = (
        Body.of("policy")
        .set(
            "spec.trustedSigners",
            [{"name": "e2e-key", "kind": "key", "key": {"publicKey": public}}],
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
    apply(kube, namespace, _suite(inputs))
    return (
        Body.of("founder-import")
        .set("spec.operator.import.uri", str(founder_dir))
        .set("spec.operator.import.digest", directory_id(founder_dir))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .set("spec.resources", {**LOCAL_NODE, "backoffLimit": 0})
    )


def test_founder_manifest_ends_ready_signed_and_evaluated(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    inputs = _inputs(operator)
    founder = _governance_and_founder(kube, namespace, tmp_path, inputs)
    apply(kube, namespace, founder.manifest)

    def finished() -> dict[str, Any] | None:
        status = descendant_status(kube, namespace, "minilm-base")
        return status if status.get("phase") in ("Ready", "Failed", "Rejected") else None

    status = wait_for(finished, timeout=600, what="founder finished", log=operator.log)
    assert status["phase"] == "Ready", status.get("message")
    assert status["stage"] == "candidate"
    artifact = status["artifact"]
    assert artifact["id"].startswith("sha256:") and artifact["signer"].startswith("key:")
    assert status["lineage"]["operator"] == "import"
    # The Job pinned the trainer image by digest: the lineage names exactly that build.
    digest = image("trainer").partition("@")[2]
    assert status["lineage"]["codeVersion"] == f"{__version__}@{digest}"
    assert status["scorecard"]["verdict"] == "pass"
    assert "sentiment-gate/accuracy" in status["scorecard"]["metrics"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Admitted": "True",
        "Bred": "True",
        "Evaluated": "True",
        "Signed": "True",
        "Ready": "True",
    }
    assert [(j["purpose"], j["phase"]) for j in status["jobs"]] == [
        ("breed", "Succeeded"),
        ("evaluate", "Succeeded"),
        ("sign", "Succeeded"),
    ]
    _no_signing_in(kube, namespace)
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "studbook",
            "verify",
            artifact["id"],
            "--store",
            str(operator.store),
            "--trusted-key",
            str(tmp_path / "trusted.pem"),
            "--scorecards",
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _training_data(tmp_path: Path, niche: str) -> dict[str, Any]:
    """A train split with integer labels (the trainer's format), declared as spec.data."""
    records = [
        {"text": r["text"], "label": fx.LABELS.index(r["label"])}
        for r in fx.splits(niche, {"train": 64, "gate": 24, "holdout": 12, "optimize": 12})["train"]
    ]
    path = _share(fx.write_jsonl(tmp_path / f"{niche}-train.jsonl", records))
    return {"name": f"{niche}-train", "uri": str(path), "digest": bytes_digest(path.read_bytes())}


def _lora(name: str, niche: str, data: dict[str, Any]) -> dict[str, Any]:
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
        .set("spec.resources", {**LOCAL_NODE, "backoffLimit": 0})
        .manifest
    )


def test_lora_specialists_and_their_ties_merge_end_ready_signed_and_evaluated(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    inputs = _inputs(operator)
    founder = _governance_and_founder(kube, namespace, tmp_path, inputs)
    merge = (
        Body.of("ties-merge")
        .set("spec.operator.merge.overrides", [])
        .set("spec.resources", {**LOCAL_NODE, "backoffLimit": 0})
    )
    # Children first: each waits for its parents to be Ready, as with `kubectl apply -f dir/`.
    apply(kube, namespace, merge.manifest)
    apply(
        kube,
        namespace,
        _lora("minilm-sentiment", "sentiment", _training_data(inputs, "sentiment")),
    )
    apply(kube, namespace, _lora("minilm-topic", "topic", _training_data(inputs, "topic")))
    apply(kube, namespace, founder.manifest)

    names = ["minilm-base", "minilm-sentiment", "minilm-topic", "minilm-sentiment-topic-ties"]

    def finished() -> list[dict[str, Any]] | None:
        statuses = [descendant_status(kube, namespace, n) for n in names]
        done = all(s.get("phase") in ("Ready", "Failed", "Rejected") for s in statuses)
        return statuses if done else None

    statuses = wait_for(finished, timeout=1200, what="the family finished", log=operator.log)
    for name, status in zip(names, statuses, strict=True):
        assert status["phase"] == "Ready", (name, status.get("message"))
        assert status["artifact"]["signer"].startswith("key:"), name
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
    for status in statuses:
        verified = subprocess.run(
            [
                sys.executable,
                "-m",
                "studbook",
                "verify",
                status["artifact"]["id"],
                "--store",
                str(operator.store),
                "--trusted-key",
                str(tmp_path / "trusted.pem"),
            ],
            capture_output=True,
            text=True,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
