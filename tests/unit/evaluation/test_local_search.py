"""``studbook breed`` on a directory with a BreedingRun: a real search on one machine.

Three founders (the fixtures' MiniLM base and its sentiment and topic specialists) are imported,
evaluated and signed; then a small NSGA-II search over linear and TIES recipes per block of
layers runs in one trial process, its ledger signed, and the Descendants of its Pareto front
are bred, evaluated and signed like any other. Interrupted, it resumes from its ledger without
scoring a trial twice; given more trials, it continues.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from tests.builders import Body

from studbook.api import Descendant, parse_manifest
from studbook.api.common import Compatibility
from studbook.api.ledger import Ledger
from studbook.api.suite import SuiteDataset
from studbook.api.task import TRIALS_FILE, ParentArtifact, TrialResult, TrialTask
from studbook.artifacts import TrustedKey, TrustPolicy
from studbook.artifacts.signing import verify_ledger
from studbook.local.manifests import load, manifest_files
from studbook.local.pipeline import LocalBreeder
from studbook.local.runs import RunError, TrialProcess
from studbook.local.workspace import Workspace
from studbook_trainer.evaluation import bytes_digest
from studbook_trainer.operators.simple import directory_id

from . import _fixtures as fx
from .conftest import Data, Models, suite_spec

RUN = "sentiment-topic-search"


def _write(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def _founder(name: str, model: Path) -> dict[str, Any]:
    return (
        Body.of("founder-import")
        .set("metadata.name", name)
        .set("spec.operator.import.uri", str(model))
        .set("spec.operator.import.digest", directory_id(model))
        .set("spec.compatibility.architecture", "BertForSequenceClassification")
        .manifest
    )


def _run(**budget: int) -> dict[str, Any]:
    spec = {
        "parentPool": [{"name": n} for n in ("minilm-base", "minilm-sentiment", "minilm-topic")],
        "base": "minilm-base",
        "objectives": [
            {"metric": "sentiment-optimize/accuracy"},
            {"metric": "topic-optimize/accuracy"},
        ],
        "searchSpace": {
            "methods": ["linear", "ties"],
            "weightRange": {"min": 0.0, "max": 1.2},
            "densityRange": {"min": 0.3, "max": 0.9},
            "layerGranularity": "block",
            "blocks": 2,
        },
        "strategy": "nsga2",
        "budget": {"maxTrials": 6, "population": 3, **budget},
        "seed": 3,
        "template": {
            "compatibility": {
                "baseFamily": "minilm-l6",
                "architecture": "BertForSequenceClassification",
                "tokenizerId": "bert-base-uncased-wordpiece-30522",
            },
            "license": "Apache-2.0",
            "dtype": "float32",
        },
        "policyRef": {"name": "standard"},
        "evaluationSuiteRef": {"name": "sentiment-topic"},
    }
    return Body.of("breeding-run").set("metadata.name", RUN).set("spec", spec).manifest


def _manifests(
    root: Path, models: Models, data: Data, run: dict[str, Any], policy: Body | None = None
) -> Path:
    """The founders, the policy, a suite with an optimize set per niche, and ``run``."""
    manifests = root / "manifests"
    manifests.mkdir()
    topic = fx.write_jsonl(root / "t-opt.jsonl", fx.examples("topic", 32, seed=11))
    optimize = {
        "name": "topic-optimize",
        "uri": topic.as_uri(),
        "digest": bytes_digest(topic.read_bytes()),
        "role": "optimize",
        "task": "classification",
    }
    spec = suite_spec(data)
    spec["datasets"].insert(1, optimize)
    suite = Body.of("suite").set("spec", spec).manifest
    policy = policy or Body.of("policy").set("spec.evaluationGates", {})
    _write(manifests / "governance.yaml", policy.manifest, suite)
    founders = [
        _founder("minilm-base", models.base),
        _founder("minilm-sentiment", models.sentiment),
        _founder("minilm-topic", models.topic),
    ]
    _write(manifests / "founders.yaml", *founders)
    _write(manifests / "search.yaml", run)
    return manifests


def _breed(manifests: Path, workspace: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "studbook", "breed", str(manifests)]
    return subprocess.run([*command, "--workspace", str(workspace)], capture_output=True, text=True)


def _run_record(workspace: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((workspace / "breedingruns.json").read_text())[RUN]
    return record


def _ledger(workspace: Path) -> tuple[Path, Ledger]:
    uri = Path(_run_record(workspace)["status"]["ledgerUri"])
    return uri, Ledger.model_validate_json(uri.read_bytes())


def _scored(workspace: Path) -> list[int]:
    """The numbers of the trials the trial process scored, in order, from its trials.jsonl."""
    (trials,) = (workspace / "store" / "outputs").glob(f"brun-*/{TRIALS_FILE}")
    return [
        TrialResult.model_validate_json(line).number for line in trials.read_text().splitlines()
    ]


def _proposals(ledger: Ledger) -> list[tuple[Any, ...]]:
    return [(t.number, t.params, t.state, t.values, t.told) for t in ledger.trials]


@dataclass(frozen=True)
class Searched:
    manifests: Path
    workspace: Path
    output: str


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, models: Models, data: Data) -> Searched:
    root = tmp_path_factory.mktemp("search")
    manifests = _manifests(root, models, data, _run())
    done = _breed(manifests, root / "workspace")
    assert done.returncode == 0, done.stdout + done.stderr
    return Searched(manifests, root / "workspace", done.stdout)


def test_a_run_searches_then_breeds_and_signs_its_front(searched: Searched) -> None:
    workspace = searched.workspace
    record = _run_record(workspace)
    status = record["status"]
    assert status["phase"] == "Succeeded", status
    assert status["trialsDone"] + status.get("trialsFailed", 0) == 6
    assert status["message"] == "all 6 trials done"
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Complete"] == ["BudgetSpent"]
    front = status["paretoFront"]
    assert front and status["best"] == front[0] and status["best"]["descendant"]
    assert len(status["history"]) == 2
    registry = json.loads((workspace / "registry.json").read_text())
    pins = {n: registry[n]["status"]["artifact"]["id"] for n in ("minilm-base", "minilm-topic")}
    for point in front:
        child = registry[point["descendant"]]["status"]
        assert child["phase"] == "Ready" and child["artifact"]["signer"].startswith("key:")
        assert child["lineage"]["origin"] == {
            "breedingRun": RUN,
            "generation": point["generation"],
            "trial": point["trial"],
        }
        assert child["lineage"]["operator"] == "merge"
        assert pins["minilm-base"] in child["lineage"]["parentIds"]
        assert pins["minilm-topic"] in child["lineage"]["parentIds"]
    out = searched.output
    assert f"breeding run {RUN}: Succeeded: all 6 trials done" in out
    assert f"-> {status['best']['descendant']}" in out
    assert "trial 5 (generation 1)" in out and "best so far trial" in out
    # The ledger: every trial, signed by the workspace key.
    ledger_at, ledger = _ledger(workspace)
    assert [t.state for t in ledger.trials].count("running") == 0 and len(ledger.trials) == 6
    assert ledger.num_layers == 6, "the base parent's config.json gives the layer count"
    assert {t.recipe.method for t in ledger.trials} <= {"linear", "ties"}
    key = serialization.load_pem_private_key(
        (workspace / "signing" / "key.pem").read_bytes(), password=None
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bundle = ledger_at.with_name("ledger.json.sig").read_bytes()
    trust = TrustPolicy((TrustedKey(public, "workspace"),))
    assert verify_ledger(f"local/{RUN}", ledger_at.read_bytes(), bundle, trust)
    assert _scored(workspace) == list(range(6))


def test_the_report_shows_the_run(searched: Searched, tmp_path: Path) -> None:
    out = tmp_path / "report"
    command = [sys.executable, "-m", "studbook", "report", "--workspace"]
    done = subprocess.run([*command, str(searched.workspace), "--out", str(out)], text=True)
    assert done.returncode == 0
    page = (out / "report.html").read_text()
    status = _run_record(searched.workspace)["status"]
    best = status["best"]["descendant"]
    assert f'id="run-{RUN}"' in page and 'class="pareto"' in page
    assert "optimize data (trial) vs gate data (scorecard)" in page
    assert "sentiment-gate" in page and "topic-gate" in page
    recipe = out / f"{RUN}-best.yaml"
    assert f'href="{recipe.name}"' in page
    text = recipe.read_text()
    manifest = yaml.safe_load(text)
    descendant = parse_manifest(manifest)
    assert isinstance(descendant, Descendant) and descendant.metadata.name == best
    assert descendant.spec.origin is None, "a cluster has no such run"
    assert all(p.artifact_id for p in descendant.spec.parents), "pinned to what was scored"
    markdown = (out / "report.md").read_text()
    assert f"## Breeding run {RUN}" in markdown and f"]({recipe.name})" in markdown


def _copy(searched: Searched, root: Path) -> tuple[Path, Path]:
    """The searched directory and its workspace, copied; the parents bred, the run not yet."""
    manifests, workspace = root / "manifests", root / "workspace"
    shutil.copytree(searched.manifests, manifests)
    shutil.copytree(searched.workspace, workspace)
    return manifests, workspace


def test_an_interrupted_run_resumes_from_its_ledger(searched: Searched, tmp_path: Path) -> None:
    manifests, workspace = _copy(searched, tmp_path)
    shutil.rmtree(workspace / "store" / "breedingruns")
    for output in (workspace / "store" / "outputs").glob("brun-*"):
        shutil.rmtree(output)
    (workspace / "breedingruns.json").unlink()
    told: list[str] = []

    def progress(name: str, what: str) -> None:
        told.append(what)
        if name == RUN and what.startswith("trial 2 "):
            raise KeyboardInterrupt

    breeder = LocalBreeder(Workspace(workspace), progress)
    with pytest.raises(KeyboardInterrupt):
        for _ in breeder.breed(load(manifest_files(manifests))):
            pass
    assert not (workspace / "breedingruns.json").exists(), "a run is recorded once it stops"
    (at,) = (workspace / "store" / "breedingruns").glob(f"local/{RUN}/*/ledger.json")
    partial = Ledger.model_validate_json(at.read_bytes())
    assert [t.state != "running" for t in partial.trials] == [True, True, True]
    assert _scored(workspace) == [0, 1, 2]
    done = _breed(manifests, workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from its ledger: 3 trials told" in done.stdout
    assert _scored(workspace) == list(range(6)), "no trial is scored twice"
    _, resumed = _ledger(workspace)
    _, uninterrupted = _ledger(searched.workspace)
    assert _proposals(resumed) == _proposals(uninterrupted)


def test_a_trial_in_flight_is_sent_again(searched: Searched, tmp_path: Path) -> None:
    """A ledger that says a trial is running (killed mid-trial) resumes by sending it again;
    the trial process answers it from its trials.jsonl if it had finished it."""
    manifests, workspace = _copy(searched, tmp_path)
    at, ledger = _ledger(workspace)
    at = Path(str(at).replace(str(searched.workspace), str(workspace)))
    # Cut the ledger back to before trial 5 was told: it stays proposed, running.
    last = ledger.trials[5].model_copy(
        update={"state": "running", "told": None, "values": None, "seconds": None}
    )
    at.write_text(
        ledger.model_copy(update={"trials": [*ledger.trials[:5], last]}).model_dump_json(
            by_alias=True, exclude_none=True
        )
    )
    done = _breed(manifests, workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from its ledger: 5 trials told" in done.stdout
    assert _scored(workspace) == list(range(6)), "answered from trials.jsonl"
    _, resumed = _ledger(workspace)
    assert _proposals(resumed) == _proposals(ledger)


def test_raising_max_trials_continues_a_finished_run(searched: Searched) -> None:
    workspace = searched.workspace
    _, before = _ledger(workspace)
    _write(searched.manifests / "search.yaml", _run(maxTrials=8))
    done = _breed(searched.manifests, workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from its ledger: 6 trials told" in done.stdout
    _, after = _ledger(workspace)
    assert len(after.trials) == 8
    assert _proposals(after)[:6] == _proposals(before)
    assert _scored(workspace) == list(range(8)), "the first six are not scored again"
    assert _run_record(workspace)["status"]["message"] == "all 8 trials done"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"objectives": [{"metric": "sentiment-gate/accuracy"}]},
            "spec.objectives[0].metric",
            "a search reads only optimize data",
        ),
        (
            {"searchSpace": {"methods": ["linear"], "weightRange": {"min": 0.0, "max": 3.0}}},
            "spec.searchSpace.weightRange",
            "BudgetExceeded",
        ),
    ],
)
def test_a_refused_run_stops_before_anything_runs(
    tmp_path: Path,
    models: Models,
    data: Data,
    change: dict[str, Any],
    field: str,
    words: str,
) -> None:
    run = _run()
    run["spec"].update(change)
    manifests = _manifests(tmp_path, models, data, run)
    done = _breed(manifests, tmp_path / "workspace")
    assert done.returncode == 1
    out = " ".join(done.stdout.split())
    assert "nothing was bred" in out and f"search.yaml: {field}:" in out and words in out, out
    assert not (tmp_path / "workspace" / "store" / "breedingruns").exists()
    record = _run_record(tmp_path / "workspace")
    assert record["status"]["phase"] == "Failed" and field in record["status"]["message"]


def test_a_trial_process_that_refuses_its_task_says_why(tmp_path: Path, data: Data) -> None:
    path = data.files["sentiment-optimize"]
    dataset = SuiteDataset(
        name="sentiment-optimize",
        uri=path.as_uri(),
        digest="sha256:" + "0" * 64,  # not the file's: refused before any parent is read
        role="optimize",
        task="classification",
    )
    parents = [
        ParentArtifact(name=name, artifact_id="sha256:" + c * 64, uri=str(tmp_path / name))
        for name, c in (("minilm-base", "a"), ("minilm-topic", "b"))
    ]
    task = TrialTask(
        run=f"local/{RUN}",
        parents=parents,
        compatibility=Compatibility(base_family="minilm-l6", architecture="Bert", tokenizer_id="t"),
        datasets=[dataset],
        objectives=["sentiment-optimize/accuracy"],
        store=str(tmp_path / "store"),
        output=str(tmp_path / "out"),
    )
    task_path = tmp_path / "trials.task.json"
    task_path.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
    with pytest.raises(RunError) as refused:
        TrialProcess(task_path, tmp_path / "trials.log")
    said = str(refused.value)
    assert said.startswith("the trial process refused its task before it loaded the parents: ")
    assert "sentiment-optimize" in said, said
