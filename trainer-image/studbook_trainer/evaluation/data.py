"""Evaluation datasets: fetched by URI, checked against their digest, parsed, checked for leaks.

A dataset is a JSON Lines file, one example per line. The fields each task reads:

* ``classification``: ``text`` (string), ``label`` (an integer class index, or a string the
  model's ``config.label2id`` maps), optional ``textPair`` (string) for sentence pairs;
* ``causal-lm``: either ``text`` (string; scored for perplexity) or ``prompt`` and ``target``
  (strings; the target is scored for perplexity given the prompt, and greedy generation from the
  prompt is compared with it for exact match);
* ``custom``: any JSON object; the user-defined task reads it.

Every dataset of a suite is read and checked against its digest (``sha256:`` + the hex SHA-256
of the file's bytes) before any model is loaded: a mismatch refuses the whole evaluation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import rfc8785

from studbook.api.suite import EvaluationSuiteSpec, SuiteDataset
from studbook_trainer.evaluation.errors import (
    DataLeakError,
    DatasetDigestError,
    DatasetFormatError,
    SuiteRefusedError,
)

Record = Mapping[str, Any]
"""One example of a dataset, as parsed from its JSON line."""


@dataclass(frozen=True)
class Dataset:
    """A suite dataset whose bytes matched its digest, with its parsed examples."""

    spec: SuiteDataset
    """The dataset as the suite declares it."""
    records: tuple[Record, ...]
    """Its examples, cut to the suite's ``limit``."""

    @property
    def name(self) -> str:
        """The dataset's name in the suite."""
        return self.spec.name

    def __len__(self) -> int:
        return len(self.records)


def bytes_digest(data: bytes) -> str:
    """``sha256:`` + the hex SHA-256 of ``data``: the digest a suite pins a dataset with."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _resolve(uri: str, base_dir: Path | None) -> str:
    if "://" in uri or base_dir is None or Path(uri).is_absolute():
        return uri
    return str(base_dir / uri)


def read_bytes(uri: str, base_dir: Path | None = None) -> bytes:
    """The bytes behind a URI (a path, ``file://``, or any scheme fsspec knows, ``s3://``...)."""
    target = _resolve(uri, base_dir)
    try:
        with fsspec.open(target, "rb") as f:
            data = f.read()
    except (OSError, ValueError, ImportError) as exc:
        raise DatasetFormatError(f"cannot read {uri}: {exc}") from exc
    if not isinstance(data, bytes):  # pragma: no cover - fsspec text mode is never asked for
        raise DatasetFormatError(f"{uri} did not read as bytes")
    return data


def _parse(spec: SuiteDataset, data: bytes) -> tuple[Record, ...]:
    records: list[Record] = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if spec.limit is not None and len(records) >= spec.limit:
            break
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DatasetFormatError(f"{spec.name}:{lineno}: not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise DatasetFormatError(f"{spec.name}:{lineno}: a record must be a JSON object")
        problem = _record_problem(spec.task, record)
        if problem:
            raise DatasetFormatError(f"{spec.name}:{lineno}: {problem}")
        records.append(record)
    if not records:
        raise DatasetFormatError(f"{spec.name}: no examples")
    return tuple(records)


def _record_problem(task: str, record: Mapping[str, Any]) -> str | None:
    if task == "classification":
        if not isinstance(record.get("text"), str):
            return "a classification record needs a string text"
        label = record.get("label")
        if isinstance(label, bool) or not isinstance(label, int | str):
            return "a classification record needs a label (class index or name)"
        if "textPair" in record and not isinstance(record["textPair"], str):
            return "textPair must be a string"
    elif task == "causal-lm":
        has_text = isinstance(record.get("text"), str)
        has_pair = isinstance(record.get("prompt"), str) and isinstance(record.get("target"), str)
        if has_text == has_pair:
            return "a causal-lm record needs either text, or prompt and target"
    return None


def load_dataset(spec: SuiteDataset, base_dir: Path | None = None) -> Dataset:
    """Read one dataset, refuse it unless its bytes match its digest, and parse it."""
    data = read_bytes(spec.uri, base_dir)
    actual = bytes_digest(data)
    if actual != spec.digest:
        raise DatasetDigestError(
            f"dataset {spec.name} ({spec.uri}) hashes to {actual}, the suite pins {spec.digest}"
        )
    return Dataset(spec, _parse(spec, data))


def load_datasets(suite: EvaluationSuiteSpec, base_dir: Path | None = None) -> dict[str, Dataset]:
    """Read, digest-check and parse every dataset of a suite, then check the suite for leaks.

    Every digest is checked before any dataset is parsed for use, and this runs before any model
    is loaded; the first mismatch refuses the evaluation.
    """
    check_suite(suite)
    datasets = read_datasets(suite.datasets, base_dir)
    check_leaks(datasets.values())
    return datasets


def read_datasets(
    specs: Sequence[SuiteDataset], base_dir: Path | None = None
) -> dict[str, Dataset]:
    """Read some datasets of a suite, refuse them unless every one matches its digest, parse.

    Every digest is checked before any dataset is parsed for use; the first mismatch refuses.
    """
    raw = {d.name: read_bytes(d.uri, base_dir) for d in specs}
    for spec in specs:
        actual = bytes_digest(raw[spec.name])
        if actual != spec.digest:
            raise DatasetDigestError(
                f"dataset {spec.name} ({spec.uri}) hashes to {actual}, the suite pins {spec.digest}"
            )
    return {d.name: Dataset(d, _parse(d, raw[d.name])) for d in specs}


def check_suite(suite: EvaluationSuiteSpec) -> None:
    """Refuse a suite whose roles overlap by digest (also when built without validation)."""
    reasons = [
        f"datasets {a.name} ({a.role}) and {b.name} ({b.role}) have the same digest"
        for i, a in enumerate(suite.datasets)
        for b in suite.datasets[i + 1 :]
        if a.digest == b.digest and a.role != b.role
    ]
    if reasons:
        raise DataLeakError("; ".join(reasons))


def check_suite_for_search(suite: EvaluationSuiteSpec, optimize_on: Iterable[str]) -> None:
    """Refuse a search that would optimize on anything but the suite's ``optimize`` datasets.

    ``optimize_on`` names the datasets the search tunes on; each must exist and have role
    ``optimize``, gate and holdout data never feed a search. The suite's own role overlap is
    checked as well. Every problem is reported, not only the first.
    """
    check_suite(suite)
    by_name = {d.name: d for d in suite.datasets}
    reasons: list[str] = []
    for name in optimize_on:
        found = by_name.get(name)
        if found is None:
            reasons.append(f"{name}: not a dataset of the suite")
        elif found.role != "optimize":
            reasons.append(f"{name}: a {found.role} dataset, a search may not optimize on it")
    if reasons:
        raise SuiteRefusedError("; ".join(reasons))


def example_key(task: str, record: Record) -> str:
    """What identifies an example's input, for the leak check (labels and targets left out)."""
    if task == "classification":
        body: Any = [record["text"], record.get("textPair")]
    elif task == "causal-lm":
        body = record.get("prompt", record.get("text"))
    else:
        body = dict(record)
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def check_leaks(datasets: Iterable[Dataset]) -> None:
    """Refuse when an example of a gate or holdout dataset appears in an optimize dataset.

    Digests only catch whole-file copies; this catches a held-out example copied into a dataset
    a search tunes on, whatever the rest of the file holds.
    """
    items = list(datasets)
    seen: dict[str, str] = {}
    for d in items:
        if d.spec.role == "optimize":
            for r in d.records:
                seen.setdefault(example_key(d.spec.task, r), d.name)
    reasons: list[str] = []
    for d in items:
        if d.spec.role == "optimize":
            continue
        leaked: dict[str, int] = {}
        for r in d.records:
            source = seen.get(example_key(d.spec.task, r))
            if source is not None:
                leaked[source] = leaked.get(source, 0) + 1
        reasons.extend(
            f"{count} example(s) of {d.spec.role} dataset {d.name} appear in optimize dataset"
            f" {source}"
            for source, count in sorted(leaked.items())
        )
    if reasons:
        raise DataLeakError("; ".join(reasons))


def class_index(record: Record, label2id: Mapping[str, int], num_labels: int) -> int:
    """The class index of a classification record's label."""
    label = record["label"]
    if isinstance(label, str):
        if label not in label2id:
            raise DatasetFormatError(
                f"label {label!r} is not one of the model's labels {sorted(label2id)}"
            )
        index = label2id[label]
    else:
        index = int(label)
    if not 0 <= index < num_labels:
        raise DatasetFormatError(f"label {label!r} is outside the model's {num_labels} classes")
    return index


def texts(records: Sequence[Record]) -> tuple[list[str], list[str] | None]:
    """The texts of classification records, and their pairs when every record has one."""
    first = [str(r["text"]) for r in records]
    if all("textPair" in r for r in records):
        return first, [str(r["textPair"]) for r in records]
    return first, None
