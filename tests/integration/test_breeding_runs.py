"""BreedingRuns against the real control plane: admission, trial Jobs, the ledger, restarts.

Parents are sealed and signed in the test's store and marked Ready before the operator starts,
as in test_admission_refusals. The trial Jobs land on kwok's fake nodes, whose pods complete
without running a trainer, so a trial Job left alone fails its trials for want of a result. Where
a test needs scores, it plays Kueue and the trainer (:class:`Trainer`): trial Jobs are created
suspended in a queue, and it writes each one's results into the Job's own output before it lets
the Job go. Runs whose trials are really merged and scored are left to the e2e suite.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from studbook import GROUP, VERSION
from studbook.api.ledger import Ledger
from studbook.api.task import TRIALS_FILE, TrialResult, TrialTask, ledger_uri, output_uri
from studbook.artifacts import Store
from studbook.artifacts.policy import trust_policy
from studbook.artifacts.signing import sign_artifact, verify_ledger
from studbook.breeding.runs import RUN_LABEL
from studbook.k8s.jobs import ANNOTATION_TASK, LABEL_FIRST_TRIAL, LABEL_LAST_TRIAL
from tests.builders import Body
from tests.keys import ec_key
from tests.operator_fixtures import (
    OperatorProcess,
    apply,
    read_resource,
    ready_parent,
    seal_model,
    signing_key,
    wait_for,
)

pytestmark = pytest.mark.cluster

RUN = "sentiment-topic-search"
PARENTS = ("minilm-base", "minilm-sentiment", "minilm-topic")
SENTIMENT, TOPIC = "sentiment-optimize/accuracy", "topic-optimize/accuracy"
QUEUED = {"spec.template.resources": {"cpu": "1", "memory": "1Gi", "queueName": "team-a"}}
"""Trial Jobs created suspended, waiting for Kueue's queue ``team-a`` (no Kueue runs here)."""
KILLS = 6


def _policy(public: str) -> Body:
    return Body.of("policy").set(
        "spec.trustedSigners", [{"name": "test-key", "kind": "key", "key": {"publicKey": public}}]
    )


def _run(budget: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The example run on whole-model coefficients, with a small budget."""
    body = Body.of("breeding-run")
    spec = body.manifest["spec"]
    spec["searchSpace"].update(layerGranularity="model", tensorKinds=[])
    del spec["searchSpace"]["blocks"]
    spec["budget"] = budget
    for path, value in changes.items():
        body.set(path, value)
    return body.manifest


def _governed(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> str:
    """Policy, suite and three Ready, signed parents; the operator started with a signing key
    of its own. Returns the trusted public key."""
    store = Store.open(operator.store)
    signer, public = signing_key(tmp_path)
    apply(kube, namespace, _policy(public).manifest)
    apply(kube, namespace, Body.of("suite").manifest)
    for name in PARENTS:
        artifact = seal_model(store, tmp_path, name)
        sign_artifact(store, artifact, signer)
        ready_parent(kube, namespace, name, artifact, store)
    # The operator signs ledgers with its own key, which the policy trusts too.
    operator_key = ec_key(tmp_path / "operator-signing" / "key.pem")
    operator.env["STUDBOOK_SIGNING_DIR"] = str(tmp_path / "operator-signing")
    operator.start()
    return operator_key


def _status(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = read_resource(kube, namespace, "breedingruns", RUN).get("status") or {}
    return status


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c["type"] == type_), {}
    )
    return found


def _trial_jobs(kube: client.ApiClient, namespace: str) -> list[client.V1Job]:
    return list(
        client.BatchV1Api(kube).list_namespaced_job(namespace, label_selector=RUN_LABEL).items
    )


def _ledger(operator: OperatorProcess, namespace: str, uid: str) -> tuple[bytes, Ledger]:
    uri = ledger_uri(str(operator.store), namespace, RUN, uid)
    raw = Path(uri).read_bytes()
    return raw, Ledger.model_validate_json(raw)


def _verify(operator: OperatorProcess, namespace: str, uid: str, public: str) -> Ledger:
    raw, ledger = _ledger(operator, namespace, uid)
    uri = ledger_uri(str(operator.store), namespace, RUN, uid)
    bundle = Path(uri + ".sig").read_bytes()
    trusted = _policy(public).policy().spec.trusted_signers
    verify_ledger(f"{namespace}/{RUN}", raw, bundle, trust_policy(trusted))
    return ledger


def _finished(kube: client.ApiClient, namespace: str, trials: int) -> Any:
    def probe() -> dict[str, Any] | None:
        status = _status(kube, namespace)
        done = status.get("trialsDone", 0) + status.get("trialsFailed", 0)
        signed = _condition(status, "Signed").get("status") == "True"
        return status if status.get("phase") == "Succeeded" and done == trials and signed else None

    return probe


def _each_trial_in_one_job(kube: client.ApiClient, namespace: str, trials: int) -> None:
    jobs = _trial_jobs(kube, namespace)
    given = Counter(
        n
        for j in jobs
        for n in range(
            int(j.metadata.labels[LABEL_FIRST_TRIAL]), int(j.metadata.labels[LABEL_LAST_TRIAL]) + 1
        )
    )
    assert sorted(given) == list(range(trials)), given
    assert set(given.values()) == {1}, f"a trial was given to two Jobs: {given}"
    for job in jobs:
        (owner,) = job.metadata.owner_references
        assert (owner.kind, owner.name) == ("BreedingRun", RUN)


def test_a_run_whose_objective_reads_gate_data_fails_naming_the_field_and_creates_no_job(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    _, public = signing_key(tmp_path)
    apply(kube, namespace, _policy(public).manifest)
    apply(kube, namespace, Body.of("suite").manifest)
    gate = {"metric": "sentiment-gate/accuracy", "direction": "maximize"}
    apply(kube, namespace, _run({"maxTrials": 4, "population": 2}, **{"spec.objectives": [gate]}))
    status = wait_for(
        lambda: (s := _status(kube, namespace)).get("phase") == "Failed" and s,
        what="the run failed",
        log=operator.log,
    )
    assert "spec.objectives[0].metric" in status["message"]
    assert "sentiment-gate is a gate dataset" in status["message"]
    assert _condition(status, "Complete")["reason"] == "InvalidSpec"
    assert _trial_jobs(kube, namespace) == []


def test_a_run_spends_its_budget_across_operator_kills_and_goes_on_when_it_grows(
    kube: client.ApiClient, namespace: str, idle_operator: OperatorProcess, tmp_path: Path
) -> None:
    public = _governed(kube, namespace, idle_operator, tmp_path)
    created = apply(
        kube, namespace, _run({"maxTrials": 8, "population": 3, "parallelism": 2}, **QUEUED)
    )
    uid = created["metadata"]["uid"]
    trainer = Trainer(kube, namespace, idle_operator)
    rng = random.Random(20261206)
    kills = {"count": 0, "next": time.monotonic() + rng.uniform(0.5, 3.0)}

    def killing_until(trials: int) -> dict[str, Any] | None:
        # The operator is killed at random points of the run: before or after it wrote the
        # ledger, created a Job, told results, signed.
        trainer.answer()
        if kills["count"] < KILLS and time.monotonic() >= kills["next"]:
            idle_operator.kill()
            idle_operator.start()
            kills["count"] += 1
            kills["next"] = time.monotonic() + rng.uniform(0.5, 3.0)
        probe: dict[str, Any] | None = _finished(kube, namespace, trials)()
        return probe

    status = wait_for(
        lambda: killing_until(8), timeout=300, what="8 trials told", log=idle_operator.log
    )
    assert kills["count"] >= 2, "the operator was killed while the run went on"
    assert _condition(status, "Complete")["reason"] == "BudgetSpent"
    assert (status["trialsDone"], status["trialsFailed"], status["trialsRunning"]) == (8, 0, 0)
    assert [h["generation"] for h in status["history"]] == [0, 1, 2]
    assert status["ledgerUri"].endswith(f"/{uid}/ledger.json")
    _each_trial_in_one_job(kube, namespace, 8)
    assert trainer.evaluated(idle_operator) == dict.fromkeys(range(8), 1)
    ledger = _verify(idle_operator, namespace, uid, public)
    assert sorted(t.told for t in ledger.trials if t.told is not None) == list(range(8))

    # More budget: the finished run goes on from its ledger to the new total.
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "breedingruns", RUN, {"spec": {"budget": {"maxTrials": 11}}}
    )
    kills["count"] = KILLS - 2
    status = wait_for(
        lambda: killing_until(11), timeout=300, what="11 trials told", log=idle_operator.log
    )
    assert status["observedGeneration"] == 2 and status["trialsDone"] == 11
    _each_trial_in_one_job(kube, namespace, 11)
    assert trainer.evaluated(idle_operator) == dict.fromkeys(range(11), 1)
    ledger = _verify(idle_operator, namespace, uid, public)
    assert [t.number for t in ledger.trials] == list(range(11))
    # The operator posts a look's events after it patches the status: wait for them.
    started = wait_for(
        lambda: [
            e
            for e in _events(kube, namespace)
            if e.reason == "Started" and "continues" in (e.message or "")
        ],
        what="a Started event saying the run continues",
        log=idle_operator.log,
    )
    assert started, "it said it went on"


def _events(kube: client.ApiClient, namespace: str) -> list[client.CoreV1Event]:
    found = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={RUN}"
    )
    return list(found.items)


def test_a_queued_trial_job_holds_the_clock_until_its_queue_admits_it(
    kube: client.ApiClient, namespace: str, idle_operator: OperatorProcess, tmp_path: Path
) -> None:
    _governed(kube, namespace, idle_operator, tmp_path)
    budget = {"maxTrials": 4, "population": 2, "parallelism": 2, "maxDurationSeconds": 3600}
    created = apply(kube, namespace, _run(budget, **QUEUED))

    def waiting() -> dict[str, Any] | None:
        status = _status(kube, namespace)
        return status if _condition(status, "Progressing").get("reason") == "JobSuspended" else None

    status = wait_for(waiting, timeout=120, what="the run waiting", log=idle_operator.log)
    assert "suspended until Kueue admits it to queue 'team-a'" in status["message"]
    (job,) = _trial_jobs(kube, namespace)
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
    held = status["elapsedSeconds"]
    # Past at least one sweep of the operator: the run still waits and its clock stands.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = _status(kube, namespace)
        assert status["phase"] == "Running"
        assert status["elapsedSeconds"] == held, "time in a suspended queue counted"
        time.sleep(1)
    client.BatchV1Api(kube).patch_namespaced_job(
        job.metadata.name, namespace, {"spec": {"suspend": False}}
    )
    status = wait_for(
        lambda: (s := _status(kube, namespace)).get("trialsFailed", 0) >= 2 and s,
        timeout=120,
        what="the admitted Job's trials told",
        log=idle_operator.log,
    )
    assert status["phase"] == "Running"
    # kwok's pod left no result: the Job's trials failed, with its words, and are not retried.
    _, ledger = _ledger(idle_operator, namespace, created["metadata"]["uid"])
    assert "the Job succeeded but left no result" in (ledger.trials[0].failure or "")
    names = {j.metadata.name for j in _trial_jobs(kube, namespace)}
    assert names == {f"{RUN}-trials-0-1", f"{RUN}-trials-2-3"}


class Trainer:
    """Plays Kueue and the trainer for a run's trial Jobs, which wait suspended (``QUEUED``).

    It answers each trial of a suspended Job in the Job's own output, a trade-off between the
    two objectives so that the front holds several trials, then lets the Job go; kwok completes
    its pod.
    """

    def __init__(self, kube: client.ApiClient, namespace: str, operator: OperatorProcess) -> None:
        self.kube = kube
        self.namespace = namespace
        self.operator = operator
        self.answered: set[str] = set()

    def answer(self) -> None:
        """Answer and let go every suspended trial Job not answered yet."""
        for job in _trial_jobs(self.kube, self.namespace):
            if job.metadata.name in self.answered or not job.spec.suspend:
                continue
            task = TrialTask.model_validate_json(
                job.spec.template.metadata.annotations[ANNOTATION_TASK]
            )
            lines = []
            for trial in task.trials:
                step = trial.number % 5
                metrics = {SENTIMENT: 0.7 + 0.05 * step, TOPIC: 0.95 - 0.05 * step}
                result = TrialResult(number=trial.number, metrics=metrics, score_seconds=0.1)
                lines.append(result.model_dump_json(by_alias=True))
            output = Path(output_uri(str(self.operator.store), job.metadata.uid))
            output.mkdir(parents=True, exist_ok=True)
            (output / TRIALS_FILE).write_text("\n".join(lines) + "\n")
            client.BatchV1Api(self.kube).patch_namespaced_job(
                job.metadata.name, self.namespace, {"spec": {"suspend": False}}
            )
            self.answered.add(job.metadata.name)

    def evaluated(self, operator: OperatorProcess) -> dict[int, int]:
        """How often each trial was evaluated: its result lines across every Job's output."""
        counts: Counter[int] = Counter()
        for results in Path(operator.store, "outputs").glob(f"*/{TRIALS_FILE}"):
            for line in results.read_text().splitlines():
                counts[TrialResult.model_validate_json(line).number] += 1
        return dict(sorted(counts.items()))


def test_a_scored_run_ends_with_a_signed_ledger_and_its_front_as_owned_descendants(
    kube: client.ApiClient, namespace: str, idle_operator: OperatorProcess, tmp_path: Path
) -> None:
    # The test plays Kueue and the trainer: each trial Job waits suspended until the test has
    # written its results into the Job's own output, then is let go (kwok completes its pod).
    public = _governed(kube, namespace, idle_operator, tmp_path)
    created = apply(
        kube, namespace, _run({"maxTrials": 6, "population": 3, "parallelism": 2}, **QUEUED)
    )
    uid = created["metadata"]["uid"]
    trainer = Trainer(kube, namespace, idle_operator)

    def answer_then_done() -> dict[str, Any] | None:
        trainer.answer()
        probe: dict[str, Any] | None = _finished(kube, namespace, 6)()
        return probe

    status = wait_for(answer_then_done, timeout=240, what="6 trials scored", log=idle_operator.log)
    assert _condition(status, "Complete")["reason"] == "BudgetSpent"
    assert status["trialsDone"] == 6 and status["trialsFailed"] == 0
    _each_trial_in_one_job(kube, namespace, 6)
    ledger = _verify(idle_operator, namespace, uid, public)
    assert sorted(t.told for t in ledger.trials if t.told is not None) == list(range(6))
    assert all(t.state == "succeeded" for t in ledger.trials)
    # The operator posts a look's events after it patches the status: wait for them.
    wanted = {"Started", "GenerationCompleted", "BudgetSpent"}
    wait_for(
        lambda: wanted <= {e.reason for e in _events(kube, namespace)},
        what=f"events {sorted(wanted)}",
        log=idle_operator.log,
    )
    wait_for(
        lambda: 'studbook_trials_total{outcome="succeeded"} 6.0' in idle_operator.metrics(),
        what="6 succeeded trials counted",
        log=idle_operator.log,
    )
    front = status["paretoFront"]
    assert len(front) > 1, "the scores trade one objective off against the other"
    assert status["best"]["descendant"] == f"{RUN}-t{status['best']['trial']}"
    for point in front:
        name = point["descendant"]
        assert name == f"{RUN}-t{point['trial']}"
        child = wait_for(
            lambda n=name: _descendant(kube, namespace, n), what=name, log=idle_operator.log
        )
        assert child["spec"]["origin"] == {
            "breedingRun": RUN,
            "generation": point["generation"],
            "trial": point["trial"],
        }
        assert child["metadata"]["labels"][RUN_LABEL] == RUN
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("BreedingRun", RUN, uid)
        recipe = ledger.trials[point["trial"]].recipe
        merge = child["spec"]["operator"]["merge"]
        assert merge["method"] == recipe.method
        assert merge["weights"] == [w.to_wire() for w in recipe.weights]
        assert all(p.get("artifactId") for p in child["spec"]["parents"])


def _descendant(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return read_resource(kube, namespace, "descendants", name)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
