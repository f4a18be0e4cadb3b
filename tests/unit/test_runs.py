"""A BreedingRun's plan around its search: admission, trial tasks, the Descendants of its trials,
and the signed ledger; on the examples with one change each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.builders import Body, Parent
from tests.unit.artifacts.pki import new_key

from studbook.api import Descendant, EvaluationSuite, parse_manifest, reasons
from studbook.api.task import ParentArtifact, TrialSpec, ledger_uri
from studbook.artifacts import KeySigner, TrustedKey, TrustPolicy
from studbook.artifacts.errors import (
    SignatureInvalidError,
    SignatureSubjectError,
    WrongKeyError,
)
from studbook.artifacts.signing import sign_ledger, verify_ledger
from studbook.breeding.admission import ParentFacts, admit
from studbook.breeding.runs import (
    RUN_LABEL,
    admit_run,
    descendant_name,
    descendant_of,
    probe_specs,
    trial_task,
)
from studbook.breeding.search import Scores, Search

EXAMPLES = Path(__file__).parents[2] / "examples"
POOL = ("minilm-base", "minilm-sentiment", "minilm-topic")


def _suite() -> EvaluationSuite:
    suite = parse_manifest(yaml.safe_load((EXAMPLES / "suite.yaml").read_text()), "suite")
    assert isinstance(suite, EvaluationSuite)
    return suite


def _facts(*parents: Parent) -> dict[str, ParentFacts | None]:
    return {p.fields["name"]: p.build() for p in parents}


def _pool() -> dict[str, ParentFacts | None]:
    return _facts(*(Parent(name) for name in POOL))


def test_the_example_run_is_admitted_and_every_method_is_probed() -> None:
    run = Body.of("breeding-run").run()
    decision = admit_run(run, _suite(), Body.of("policy").policy().spec, _pool())
    assert decision.admitted, decision.refusals
    probes = probe_specs(run)
    assert [p.operator.merge.method for p in probes if p.operator.merge] == [
        "linear",
        "ties",
        "dare_ties",
    ]
    # the boldest weight the search may propose is what the mutation budget judges
    assert {w.weight for p in probes if p.operator.merge for w in p.operator.merge.weights} == {1.5}


@pytest.mark.parametrize(
    ("change", "value", "field", "words"),
    [
        (
            "spec.objectives",
            [{"metric": "sentiment-gate/accuracy"}],
            "spec.objectives[0].metric",
            "a gate dataset",
        ),
        (
            "spec.objectives",
            [{"metric": "nowhere/accuracy"}],
            "spec.objectives[0].metric",
            "no dataset of",
        ),
        (
            "spec.objectives",
            [{"metric": "sentiment-optimize/bleu"}],
            "spec.objectives[0].metric",
            "not a metric a trial measures",
        ),
    ],
)
def test_objectives_must_read_optimize_data(
    change: str, value: object, field: str, words: str
) -> None:
    run = Body.of("breeding-run").set(change, value).set("spec.strategy", "random")
    run.manifest["spec"].pop("nsga2")
    decision = admit_run(run.run(), _suite(), Body.of("policy").policy().spec, _pool())
    (refusal,) = decision.refusals
    assert (refusal.reason, refusal.field) == (reasons.INVALID_SPEC, field)
    assert words in refusal.message


def test_the_policy_judges_the_boldest_recipe_once_per_field() -> None:
    run = Body.of("breeding-run").run()
    policy = Body.of("policy").set("spec.mutationBudget.maxMergeWeight", 1.0).policy()
    decision = admit_run(run, _suite(), policy.spec, _pool())
    (refusal,) = decision.refusals  # three methods, one refusal
    assert (refusal.reason, refusal.field) == (
        reasons.BUDGET_EXCEEDED,
        "spec.searchSpace.weightRange",
    )
    no_merge = Body.of("policy").set("spec.allowedOperators", ["import", "lora"]).policy()
    (refusal,) = admit_run(run, _suite(), no_merge.spec, _pool()).refusals
    assert (refusal.reason, refusal.field) == (
        reasons.OPERATOR_FORBIDDEN,
        "spec.searchSpace.methods",
    )


def test_parents_not_ready_are_waited_for_and_unsigned_ones_refused() -> None:
    run = Body.of("breeding-run").run()
    policy = Body.of("policy").policy().spec
    facts = _pool()
    facts["minilm-topic"] = Parent("minilm-topic").with_(ready=False).build()
    facts["minilm-sentiment"] = None
    decision = admit_run(run, _suite(), policy, facts)
    assert not decision.refusals
    assert decision.waiting_for == ("minilm-topic",)
    assert decision.missing == ("minilm-sentiment",)
    facts = _facts(Parent("minilm-base"), Parent("minilm-sentiment").with_(signed=False))
    facts["minilm-topic"] = Parent("minilm-topic").build()
    refusals = admit_run(run, _suite(), policy, facts).refusals
    assert [(r.reason, r.field.split("[")[0]) for r in refusals] == [
        (reasons.PARENT_UNSIGNED, "spec.parentPool")
    ]


def test_a_trial_task_carries_only_the_optimize_data_its_objectives_read() -> None:
    run = Body.of("breeding-run").run()
    suite = _suite()
    parents = [
        ParentArtifact(name=name, artifact_id=Parent(name).fields["artifact_id"], uri=f"/s/{name}")
        for name in POOL
    ]
    search = Search(run.spec, num_layers=6)
    candidates = search.ask(2)
    task = trial_task(
        run,
        suite,
        parents,
        "/store",
        "/store/outputs/x",
        [TrialSpec(number=c.number, merge=c.recipe, parents=list(c.parents)) for c in candidates],
    )
    assert [d.name for d in task.datasets] == ["sentiment-optimize", "topic-optimize"]
    assert {d.role for d in task.datasets} == {"optimize"}
    assert task.objectives == [o.metric for o in run.spec.objectives]
    assert task.run == "ml-breeding/sentiment-topic-search" and task.base == "minilm-base"
    assert [t.number for t in task.trials] == [0, 1]


def test_a_trials_descendant_is_a_valid_manifest_that_admission_accepts() -> None:
    run = Body.of("breeding-run").run()
    search = Search(run.spec, num_layers=6)
    (candidate,) = search.ask(1)
    search.tell(candidate.number, Scores({o.metric: 0.9 for o in run.spec.objectives}))
    (record,) = search.ledger().trials
    pins = {name: str(Parent(name).fields["artifact_id"]) for name in POOL}
    descendant = descendant_of(run, record, pins)
    # what the controller applies parses as a user's manifest would
    again = parse_manifest(descendant.to_wire(), "made")
    assert isinstance(again, Descendant)
    assert again.metadata.name == "sentiment-topic-search-t0"
    assert again.metadata.labels == {RUN_LABEL: "sentiment-topic-search"}
    spec = again.spec
    assert spec.origin is not None
    assert (spec.origin.breeding_run, spec.origin.trial, spec.origin.generation) == (
        "sentiment-topic-search",
        0,
        0,
    )
    assert spec.operator.merge == record.recipe
    assert {p.name: p.artifact_id for p in spec.parents} == pins
    decision = admit(spec, Body.of("policy").policy().spec, _pool())
    assert decision.admitted, decision.refusals


def test_descendant_names_fit_a_label_and_stay_apart() -> None:
    long = "a" * 60
    names = {descendant_name(long, n) for n in (1, 12, 123456)}
    assert len(names) == 3
    assert all(len(n) <= 63 and n.endswith(("-t1", "-t12", "-t123456")) for n in names)
    assert descendant_name("search", 7) == "search-t7"


def test_ledger_uri_is_keyed_by_the_runs_uid() -> None:
    assert ledger_uri("/s/", "ns", "run", "u1") == "/s/breedingruns/ns/run/u1/ledger.json"


def test_a_signed_ledger_verifies_and_any_change_is_refused(tmp_path: Path) -> None:
    key = new_key(tmp_path, "operator")
    other = new_key(tmp_path, "intruder")
    trust = TrustPolicy((TrustedKey(key.public_pem, "operator"),))
    ledger = b'{"strategy":"nsga2","seed":1,"trials":[]}'
    bundle = sign_ledger("ns/run", ledger, KeySigner(key.private_path))
    assert verify_ledger("ns/run", ledger, bundle, trust).kind == "key"
    with pytest.raises(SignatureInvalidError):
        verify_ledger("ns/run", ledger.replace(b"1", b"2"), bundle, trust)
    with pytest.raises(SignatureSubjectError):
        verify_ledger("ns/other", ledger, bundle, trust)
    forged = sign_ledger("ns/run", ledger, KeySigner(other.private_path))
    with pytest.raises(WrongKeyError):
        verify_ledger("ns/run", ledger, forged, trust)


def test_a_slerp_parent_is_named_by_its_index_in_the_pool() -> None:
    run = (
        Body.of("breeding-run")
        .set("spec.searchSpace", {"methods": ["slerp", "linear"]})
        .set("spec.base", None)
        .set("spec.parentPool", [{"name": "minilm-sentiment"}, {"name": "minilm-topic"}])
    )
    run.manifest["spec"].pop("base")
    facts = _facts(Parent("minilm-sentiment"), Parent("minilm-topic").with_(signed=False))
    refusals = admit_run(run.run(), _suite(), Body.of("policy").policy().spec, facts).refusals
    assert [(r.reason, r.field) for r in refusals] == [
        (reasons.PARENT_UNSIGNED, "spec.parentPool[1]")
    ]
    assert "recipes of" not in refusals[0].message
