"""How the trainer refuses: what import takes, every dataset checked against its digest, and
failures a retry cannot change told apart from the rest, with one sentence why."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import fsspec
import pytest
from pydantic import ValidationError

from studbook.api.common import Compatibility, TrainingData
from studbook.api.operators import OperatorSpec
from studbook.api.task import EXIT_FAILED, EXIT_REFUSED, TERMINATION_LOG_ENV, BreedTask
from studbook.artifacts import Store
from studbook.artifacts.errors import ContentMismatchError, SigningError
from studbook_trainer.__main__ import main
from studbook_trainer.evaluation.errors import DatasetDigestError, ModelLoadError
from studbook_trainer.failures import StepRefused, is_permanent, report, sentence
from studbook_trainer.merge import IncompatibleParentsError, MergeConfigError
from studbook_trainer.merge.io import CheckpointError
from studbook_trainer.operators import OperatorError, RunContext, get_operator
from studbook_trainer.operators.simple import ImportPlan, directory_id, import_listing
from studbook_trainer.runner import content_digest
from studbook_trainer.steps import breed
from studbook_trainer.task import TaskError

from ._models import minilm_dir

COMPAT = Compatibility(base_family="tiny", architecture="LlamaForCausalLM", tokenizer_id="t")


def _model_dir(root: Path) -> Path:
    """A model directory of allowed files (their contents do not matter to the import)."""
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "tokenizer.model").write_bytes(b"\x0a\x01x")
    (root / "merges.txt").write_text("#version: 0.2\n")
    return root


def _import(source: str, out: Path, digest: str | None = None) -> dict[str, object]:
    out.mkdir(parents=True)
    return get_operator("import").run(ImportPlan(source, digest), RunContext([], out))


# -- import takes safetensors and plain files only ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("pytorch_model.bin", "a pickle (.bin)"),
        ("weights.pt", "a pickle (.pt)"),
        ("model.ckpt", "a pickle (.ckpt)"),
        ("training_args.pkl", "a pickle (.pkl)"),
        ("model.gguf", "not a safetensors, JSON or text file"),
        ("model.onnx", "not a safetensors, JSON or text file"),
    ],
)
def test_import_refuses_a_pickle_or_unknown_file_before_copying_anything(
    tmp_path: Path, name: str, why: str
) -> None:
    source = _model_dir(tmp_path / "src")
    (source / name).write_bytes(b"\x80\x04K\x01.")
    out = tmp_path / "out"
    with pytest.raises(OperatorError, match=rf"refused.*{re.escape(f'{name} is {why}')}"):
        _import(str(source), out, directory_id(source))
    assert list(out.iterdir()) == [], "nothing of a refused source is copied, so nothing sealed"


def test_a_refused_import_seals_nothing(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src")
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    task = BreedTask(
        descendant="ml/founder",
        operator=OperatorSpec.model_validate(
            {"kind": "import", "import": {"uri": str(source), "digest": directory_id(source)}}
        ),
        compatibility=COMPAT,
        store=str(tmp_path / "store"),
        output=str(tmp_path / "store" / "outputs" / "breed"),
    )
    with pytest.raises(OperatorError, match=r"pytorch_model\.bin is a pickle"):
        breed(task)
    assert Store.open(tmp_path / "store").ids() == []


def test_import_refuses_links_inside_the_source(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "x"}')
    linked = _model_dir(tmp_path / "linked")
    (linked / "special_tokens_map.json").symlink_to(secret)
    with pytest.raises(OperatorError, match=r"special_tokens_map\.json is a symbolic link"):
        _import(str(linked), tmp_path / "out1")
    folder = _model_dir(tmp_path / "folder")
    (folder / "extra").symlink_to(tmp_path / "linked", target_is_directory=True)
    with pytest.raises(OperatorError, match="extra is a symbolic link"):
        _import(str(folder), tmp_path / "out2")


def test_import_refuses_a_path_that_leaves_the_source() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/escape/model.safetensors", b"weights")
    fs.pipe("/outside.json", b"{}")
    fs.store["/escape/../outside.json"] = fs.store["/outside.json"]
    with pytest.raises(OperatorError, match=r"'\.\./outside\.json' is not a path inside"):
        import_listing(fs, "/escape", "memory://escape")


def test_the_source_itself_may_be_a_link_as_make_demo_makes_it(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src")
    (tmp_path / "link").symlink_to(source, target_is_directory=True)
    report = _import(f"file://{tmp_path / 'link'}", tmp_path / "out", directory_id(source))
    assert report == {"digest": directory_id(source), "files": 4}


def test_the_quickstart_founder_passes_the_allow_list() -> None:
    fs = fsspec.filesystem("file")
    source = str(minilm_dir())
    taken = {relative for _, relative in import_listing(fs, source, source)}
    assert "model.safetensors" in taken and "1_Pooling/config.json" in taken
    assert len(taken) == len([p for p in minilm_dir().rglob("*") if p.is_file()])


# -- every dataset is checked against its digest -----------------------------------------------


def _finetune(tmp_path: Path, uri: str, digest: str) -> Path:
    """A pipeline breed task that trains on one dataset; its file, written to ``task.json``."""
    task = BreedTask(
        descendant="ml/tuned",
        operator=OperatorSpec.model_validate(
            {
                "kind": "finetune",
                "finetune": {
                    "task": "causal-lm",
                    "datasets": ["train"],
                    "steps": 1,
                    "learningRate": 1e-4,
                },
            }
        ),
        data=[TrainingData(name="train", uri=uri, digest=digest)],
        compatibility=COMPAT,
        store=str(tmp_path / "store"),
        output=str(tmp_path / "store" / "outputs" / "breed"),
    )
    path = tmp_path / "task.json"
    path.write_text(task.model_dump_json(by_alias=True, exclude_none=True))
    return path


@pytest.mark.parametrize("shape", ["file", "directory"])
def test_a_swapped_dataset_is_refused_naming_both_digests(
    tmp_path: Path,
    shape: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pinned = tmp_path / "pinned" / "train.jsonl"
    pinned.parent.mkdir()
    pinned.write_text('{"text": "the pinned example"}\n')
    dataset = pinned if shape == "file" else pinned.parent
    expected = content_digest(dataset)
    # Another file, valid JSON Lines too, where the pinned one was.
    pinned.write_text('{"text": "a swapped example"}\n')
    actual = content_digest(dataset)
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(termination))

    code = main(["run", "--task", str(_finetune(tmp_path, str(dataset), expected))])

    assert code == EXIT_REFUSED
    reason = termination.read_text().strip()
    assert f"hashes to {actual}, the task pins {expected}" in reason
    assert f"error: {reason}" in capsys.readouterr().err
    assert not (tmp_path / "store" / "runs").exists(), "no result, nothing sealed"


def test_a_file_dataset_that_matches_its_digest_is_taken(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"text": "hello"}\n')
    assert content_digest(data) == "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()


# -- failures a retry cannot change ------------------------------------------------------------


def _validation_error() -> ValidationError:
    try:
        BreedTask.model_validate({})
    except ValidationError as error:
        return error
    raise AssertionError("an empty breed task validates")


@pytest.mark.parametrize(
    "error",
    [
        TaskError("bad task"),
        OperatorError("unsupported format"),
        MergeConfigError("density out of range"),
        IncompatibleParentsError("hidden sizes differ"),
        CheckpointError("no safetensors"),
        DatasetDigestError("hashes to a, the suite pins b"),
        ModelLoadError("not a model directory"),
        ContentMismatchError("a parent's file changed"),
        _validation_error(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refusals_are_permanent(error: Exception) -> None:
    assert is_permanent(error)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory"),
        OSError("connection reset"),
        SigningError("sigstore unreachable"),
        MemoryError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_failures_are_retried(error: Exception) -> None:
    assert not is_permanent(error)


def test_the_reason_is_one_sentence_in_the_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(termination))
    assert report(StepRefused("dataset 'x'\n  is not\tJSON")) == EXIT_REFUSED
    assert termination.read_text() == "dataset 'x' is not JSON\n"
    assert report(RuntimeError("CUDA out of memory")) == EXIT_FAILED
    assert termination.read_text() == "RuntimeError: CUDA out of memory\n"
    assert capsys.readouterr().err.splitlines() == [
        "error: dataset 'x' is not JSON",
        "error: RuntimeError: CUDA out of memory",
    ]
    assert len(sentence(StepRefused("x" * 5000))) == 1000


def test_a_refused_step_task_exits_refused_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(termination))
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"schemaVersion": "task.studbook.dev/v1", "step": "breed"}))
    assert main(["run", "--task", str(task)]) == EXIT_REFUSED
    assert termination.read_text().startswith("task refused: ")
    assert len(termination.read_text().splitlines()) == 1
