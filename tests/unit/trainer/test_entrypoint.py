"""The task entrypoint: runs a task, refuses bad ones clearly, never leaves half an output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studbook_trainer.__main__ import main
from studbook_trainer.task import TaskError, parse_task

from ._models import load_state, tiny_llama


def write_task(path: Path, task: dict[str, object]) -> Path:
    path.write_text(json.dumps(task))
    return path


def merge_task(out: Path, **parents: Path) -> dict[str, object]:
    return {
        "operator": {
            "kind": "merge",
            "merge": {
                "method": "linear",
                "weights": [{"parent": "a", "weight": 0.25}, {"parent": "b", "weight": 0.75}],
                "overrides": [
                    {
                        "tensors": "model.norm.*",
                        "weights": [{"parent": "a", "weight": 1.0}, {"parent": "b", "weight": 0.0}],
                    }
                ],
            },
        },
        "parents": [{"name": n, "uri": f"file://{p}"} for n, p in parents.items()],
        "output": str(out),
    }


def test_a_merge_task_runs_as_a_job_would(tmp_path: Path, llama_a: Path, llama_b: Path) -> None:
    out = tmp_path / "out" / "descendant"
    task = write_task(tmp_path / "task.json", merge_task(out, a=llama_a, b=llama_b))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "studbook_trainer", "run", "--task", str(task)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "running merge" in proc.stderr
    report = json.loads((out / "studbook_trainer_report.json").read_text())
    assert report["operator"] == "merge" and report["report"]["method"] == "linear"
    a, b, m = load_state(llama_a), load_state(llama_b), load_state(out)
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(m[name], 0.25 * a[name] + 0.75 * b[name])
    assert torch.equal(m["model.norm.weight"], a["model.norm.weight"])
    assert [p.name for p in out.parent.iterdir()] == ["descendant"]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"operator": "crossover", "output": "x"}, "unknown operator 'crossover'"),
        ({"operator": "merge", "config": {"method": "linear"}}, "no output location"),
        (
            {
                "operator": "prune",
                "config": {"method": "magnitude", "targetSparsity": 1.5},
                "output": "x",
            },
            "out of range",
        ),
        (
            {"operator": "merge", "config": {"method": "linear", "colour": 1}, "output": "x"},
            "unknown configuration field",
        ),
    ],
)
def test_bad_tasks_are_refused_before_running(task: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        parse_task(task)


def test_bad_tasks_exit_2_with_a_clear_message(
    tmp_path: Path, llama_a: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    missing = write_task(tmp_path / "t1.json", merge_task(out, a=llama_a, b=tmp_path / "nope"))
    assert main(["run", "--task", str(missing)]) == 2
    assert "parent 'b'" in capsys.readouterr().err
    wide = tiny_llama(tmp_path / "wide", tokenizer_dir, hidden=48)
    bad = write_task(tmp_path / "t2.json", merge_task(out, a=llama_a, b=wide))
    assert main(["run", "--task", str(bad)]) == 2
    assert "config field 'head_dim' differs" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    unknown = write_task(tmp_path / "t3.json", {"operator": "graft", "output": str(out)})
    assert main(["run", "--task", str(unknown)]) == 2
    assert main(["run", "--task", str(tmp_path / "absent.json")]) == 2


def test_an_existing_output_is_never_overwritten(
    tmp_path: Path, llama_a: Path, llama_b: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    task = write_task(tmp_path / "t.json", merge_task(out, a=llama_a, b=llama_b))
    assert main(["run", "--task", str(task)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_malformed_pipeline_task_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = write_task(
        tmp_path / "t.json",
        {"schemaVersion": "task.studbook.dev/v1", "step": "breed", "descendant": "ns/x"},
    )
    assert main(["run", "--task", str(task)]) == 2
    assert "task refused" in capsys.readouterr().err
    sign = write_task(
        tmp_path / "s.json", {"schemaVersion": "task.studbook.dev/v1", "step": "sign"}
    )
    assert main(["run", "--task", str(sign)]) == 2
    assert "task refused" in capsys.readouterr().err
