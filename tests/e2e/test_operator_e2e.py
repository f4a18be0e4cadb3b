"""End to end: a founder applied as a manifest is imported, evaluated and signed by real Jobs.

The operator runs against the real control plane; its Jobs land on the local pod runner's node,
which runs them as containers of the trainer image that `make images` built (no network, a
read-only root, non-root): the trainer imports and seals the founder, the harness evaluates it
on a real suite, and the operator signs artifact and scorecard in its own process. The inputs
(founder files, datasets) lie in the artifact store's volume, the only one a step pod mounts.
``studbook verify`` then checks the artifact the way a user would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from studbook_trainer import __version__
from tests.cluster.images import image
from tests.e2e.family import (
    NAMES,
    Inputs,
    apply_family,
    check_family,
    governance_and_founder,
    key_signer,
    verify,
)
from tests.keys import ec_key
from tests.operator_fixtures import OperatorProcess, apply, descendant_status, wait_for

pytestmark = pytest.mark.cluster


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


def test_founder_manifest_ends_ready_signed_and_evaluated(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    inputs = Inputs.in_store(operator.store)
    public = (tmp_path / "trusted.pem").read_text()
    founder = governance_and_founder(kube, namespace, key_signer(public), inputs)
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
    trusted = ("--trusted-key", str(tmp_path / "trusted.pem"))
    verify(artifact["id"], operator.store, *trusted, "--scorecards")


def test_lora_specialists_and_their_ties_merge_end_ready_signed_and_evaluated(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    inputs = Inputs.in_store(operator.store)
    public = (tmp_path / "trusted.pem").read_text()
    apply_family(kube, namespace, key_signer(public), inputs)

    def finished() -> list[dict[str, Any]] | None:
        statuses = [descendant_status(kube, namespace, n) for n in NAMES]
        done = all(s.get("phase") in ("Ready", "Failed", "Rejected") for s in statuses)
        return statuses if done else None

    statuses = wait_for(finished, timeout=1200, what="the family finished", log=operator.log)
    check_family(statuses)
    for status in statuses:
        verify(
            status["artifact"]["id"], operator.store, "--trusted-key", str(tmp_path / "trusted.pem")
        )
