"""Reading a breeding directory: every problem named by file and field, parents first."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.builders import Body
from tests.manifests import EXAMPLES, example

from studbook.api import API_VERSION
from studbook.local.manifests import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_WEIGHT,
    ManifestsError,
    load,
    manifest_files,
    order,
)
from studbook.local.pipeline import screen


def _write(directory: Path, name: str, *documents: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump_all(documents))
    return path


def _family(directory: Path) -> None:
    _write(directory, "policy.yaml", example("policy"), example("suite"))
    _write(directory, "founder.yaml", example("founder-import"))
    _write(directory, "lora.yaml", example("lora-specialist"))
    topic = Body.of("lora-specialist").set("metadata.name", "minilm-topic").manifest
    _write(directory, "topic.yaml", topic)
    _write(directory, "merge.yaml", example("ties-merge"))


def test_directory_loads_and_orders_parents_first(tmp_path: Path) -> None:
    _family(tmp_path)
    manifests = load(manifest_files(tmp_path))
    names = [d.metadata.name for d in order(manifests)]
    assert names.index("minilm-base") < names.index("minilm-sentiment")
    assert names.index("minilm-topic") < names.index("minilm-sentiment-topic-ties")
    assert manifests.source(manifests.descendants["minilm-topic"]).endswith("topic.yaml")


def test_typo_in_a_field_names_file_and_field(tmp_path: Path) -> None:
    _family(tmp_path)
    typo = Body.of("lora-specialist").set("spec.operator.lora.targetModule", ["query"]).manifest
    path = _write(tmp_path, "lora.yaml", typo)
    with pytest.raises(ManifestsError) as caught:
        load(manifest_files(tmp_path))
    text = str(caught.value)
    assert f"{path}: spec.operator.lora.targetModule: Extra inputs are not permitted" in text
    assert "no Descendant" not in text, "a broken parent is not also reported missing"


def test_missing_parent_names_file_and_field(tmp_path: Path) -> None:
    _family(tmp_path)
    (tmp_path / "topic.yaml").unlink()
    with pytest.raises(ManifestsError) as caught:
        load(manifest_files(tmp_path))
    assert "merge.yaml: spec.parents[2].name: no Descendant 'minilm-topic'" in str(caught.value)


def test_parentage_cycle_is_refused(tmp_path: Path) -> None:
    _family(tmp_path)
    cyclic = (
        Body.of("founder-import")
        .set(
            "spec.operator",
            {
                "kind": "finetune",
                "finetune": {
                    "task": "sequence-classification",
                    "numLabels": 2,
                    "datasets": ["d"],
                    "steps": 10,
                    "learningRate": 0.0001,
                },
            },
        )
        .set("spec.parents", [{"name": "minilm-sentiment"}])
        .set("spec.data", [{"name": "d", "uri": "data.jsonl", "digest": "sha256:" + "0" * 64}])
        .manifest
    )
    _write(tmp_path, "founder.yaml", cyclic)
    with pytest.raises(ManifestsError) as caught:
        load(manifest_files(tmp_path))
    assert "parentage cycle: minilm-base -> minilm-sentiment -> minilm-base" in str(caught.value)


def test_duplicate_names_and_bad_yaml_are_refused(tmp_path: Path) -> None:
    _family(tmp_path)
    _write(tmp_path, "again.yaml", example("founder-import"))
    with pytest.raises(ManifestsError, match="also in"):
        load(manifest_files(tmp_path))
    (tmp_path / "again.yaml").write_text("kind: [unclosed")
    with pytest.raises(ManifestsError, match="not valid YAML"):
        load(manifest_files(tmp_path))


def test_relative_paths_count_from_the_manifest_directory(tmp_path: Path) -> None:
    nested = tmp_path / "team" / "models"
    nested.mkdir(parents=True)
    _family(tmp_path)
    founder = Body.of("founder-import").set("spec.operator.import.uri", "founder/minilm").manifest
    lora = Body.of("lora-specialist").set("spec.data.0.uri", "../data/reviews.jsonl").manifest
    _write(tmp_path, "founder.yaml", founder)
    (tmp_path / "lora.yaml").unlink()
    _write(nested, "lora.yaml", lora)
    manifests = load(manifest_files(tmp_path))
    imported = manifests.descendants["minilm-base"].spec.operator.import_
    assert imported is not None and imported.uri == str(tmp_path / "founder" / "minilm")
    reviews = manifests.descendants["minilm-sentiment"].spec.data[0]
    assert reviews.uri == str(tmp_path / "team" / "data" / "reviews.jsonl")
    # URIs with a scheme and absolute paths are left as written.
    suite = manifests.suites["sentiment-topic"].spec
    assert all(d.uri.startswith("s3://") for d in suite.datasets)


def _billion_laughs() -> str:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(_billion_laughs())
    tracemalloc.start()
    try:
        with pytest.raises(ManifestsError) as caught:
            load([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"{path}: not valid YAML: expands past {MAX_WEIGHT} nodes" in str(caught.value)
    # A billion strings would take tens of GiB; refused, it took about what the file holds.
    assert peak < 64 * 2**20, peak


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: &a [*a]\n", "an alias inside the node it refers to"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", "nested deeper than"),
        ("a: *nowhere\n", "undefined alias"),
        ("? [a, b]\n: c\n", "unhashable key"),
        (f"apiVersion: {API_VERSION}\nkind: Descendant\nspec: {{2026-01-01: x}}\n", "keys must"),
        ("- just a list\n", "a manifest must be a mapping"),
        ("metadata: [not, a, mapping]\n", "apiVersion"),
    ],
)
def test_malformed_yaml_is_a_problem_of_its_file(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ManifestsError) as caught:
        load([path])
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_a_file_too_large_or_unreadable_is_refused_by_name(tmp_path: Path) -> None:
    large = tmp_path / "large.yaml"
    large.write_text("# " + "x" * MAX_BYTES + "\n")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ManifestsError) as caught:
        load([large, missing, tmp_path])
    text = str(caught.value)
    assert f"{large}: larger than" in text
    assert f"{missing}: cannot be read" in text and f"{tmp_path}: cannot be read" in text


def test_a_promotion_is_refused_not_ignored(tmp_path: Path) -> None:
    _family(tmp_path)
    path = _write(tmp_path, "promotion.yaml", example("promotion"))
    with pytest.raises(ManifestsError) as caught:
        load(manifest_files(tmp_path))
    assert f"{path}: kind: Promotion is not run by `studbook breed`" in str(caught.value)


def test_a_breeding_run_loads_with_its_references_checked(tmp_path: Path) -> None:
    _family(tmp_path)
    _write(tmp_path, "search.yaml", example("breeding-run"))
    manifests = load(manifest_files(tmp_path))
    assert list(manifests.runs) == ["sentiment-topic-search"]
    wrong = (
        Body.of("breeding-run")
        .set("spec.parentPool", [{"name": "minilm-base"}, {"name": "minilm-sentimnet"}])
        .set("spec.policyRef", {"name": "lenient"})
        .set("spec.evaluationSuiteRef", {"name": "other"})
        .manifest
    )
    path = _write(tmp_path, "search.yaml", wrong)
    with pytest.raises(ManifestsError) as caught:
        load(manifest_files(tmp_path))
    text = str(caught.value)
    assert f"{path}: spec.parentPool[1].name: no Descendant 'minilm-sentimnet'" in text
    assert f"{path}: spec.policyRef.name: no BreedingPolicy 'lenient'" in text
    assert f"{path}: spec.evaluationSuiteRef.name: no EvaluationSuite 'other'" in text


def test_a_run_admission_refuses_is_found_up_front(tmp_path: Path) -> None:
    _family(tmp_path)
    gate = Body.of("breeding-run").set("spec.objectives", [{"metric": "sentiment-gate/accuracy"}])
    _write(tmp_path, "search.yaml", gate.manifest)
    decision = screen(load(manifest_files(tmp_path)))[("BreedingRun", "sentiment-topic-search")]
    (refusal,) = [r for r in decision.refusals if r.field == "spec.objectives[0].metric"]
    assert "a search reads only optimize data" in refusal.message


def test_the_quickstart_loads_and_nothing_in_it_is_refused_up_front() -> None:
    manifests = load(manifest_files(EXAMPLES / "quickstart"))
    assert len(manifests.descendants) == 9
    assert screen(manifests) == {}
