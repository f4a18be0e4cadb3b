"""The compatibility gate: refuse parents that cannot be merged, before any heavy work.

Only headers and small files are read: ``config.json`` fields, tensor names, shapes and dtypes
from the safetensors headers, and the digests of the tokenizer files. Every refusal names the
field, tensor or file that differs and the two parents it differs between.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studbook_trainer.failures import StepRefused
from studbook_trainer.merge.io import ModelReader

IGNORED_CONFIG_FIELDS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "id2label",
        "label2id",
        "use_cache",
        "problem_type",
        "finetuning_task",
        "_attn_implementation_autoset",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)
"""``config.json`` fields that do not change what the weights mean."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
"""Files that define a tokenizer; parents must agree on each of them byte for byte."""


class IncompatibleParentsError(StepRefused, ValueError):
    """Parents that cannot be merged; the message names what differs."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


RUNTIME_TOKENIZER_FIELDS = {
    "tokenizer.json": ("truncation", "padding"),
    "tokenizer_config.json": ("name_or_path", "local_files_only", "is_local"),
}
"""JSON fields that record how a tokenizer was last called or where it was loaded from, not what
it does to text; they are left out of the comparison."""


def _digest(path: Path) -> str:
    ignored = RUNTIME_TOKENIZER_FIELDS.get(path.name)
    if ignored:
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _sha256(path)
        if isinstance(data, dict):
            for key in ignored:
                data.pop(key, None)
            canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(canonical.encode()).hexdigest()
    return _sha256(path)


def tokenizer_digests(root: Path) -> dict[str, str]:
    """SHA-256 of each tokenizer file present (JSON files without their runtime fields)."""
    return {n: _digest(root / n) for n in TOKENIZER_FILES if (root / n).is_file()}


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    for key in sorted(set(a) | set(b)):
        if key in IGNORED_CONFIG_FIELDS:
            continue
        if key not in a or key not in b:
            return f"config field {key!r} is set in only one of them"
        if a[key] != b[key]:
            return f"config field {key!r} differs: {a[key]!r} != {b[key]!r}"
    return None


def check_compatible(
    models: Sequence[tuple[str, ModelReader]], *, allow_dtype_mismatch: bool = False
) -> None:
    """Raise :class:`IncompatibleParentsError` unless every model matches the first one.

    Compared: ``config.json`` (architecture fields), the set of tensor names, every tensor's
    shape, its dtype (floating tensors may differ when ``allow_dtype_mismatch``), and the
    tokenizer files' digests.
    """
    if len(models) < 2:
        return
    ref_name, ref = models[0]
    ref_config = ref.config
    ref_tok = tokenizer_digests(ref.root)
    for name, other in models[1:]:
        pair = f"{ref_name!r} and {name!r}"
        other_config = other.config
        if (ref_config is None) != (other_config is None):
            raise IncompatibleParentsError(f"{pair}: config.json is present in only one of them")
        if ref_config is not None and other_config is not None:
            diff = _config_diff(ref_config, other_config)
            if diff:
                raise IncompatibleParentsError(f"{pair}: {diff}")
        missing = [t for t in ref.tensors if t not in other.tensors]
        extra = [t for t in other.tensors if t not in ref.tensors]
        if missing:
            raise IncompatibleParentsError(
                f"{pair}: tensor {missing[0]!r} is missing from {name!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        if extra:
            raise IncompatibleParentsError(
                f"{pair}: tensor {extra[0]!r} is missing from {ref_name!r}"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
        for tname, a in ref.tensors.items():
            b = other.tensors[tname]
            if a.shape != b.shape:
                raise IncompatibleParentsError(
                    f"{pair}: tensor {tname!r} has shape {list(a.shape)} != {list(b.shape)}"
                )
            if a.dtype != b.dtype and not (allow_dtype_mismatch and a.floating and b.floating):
                raise IncompatibleParentsError(
                    f"{pair}: tensor {tname!r} has dtype {a.dtype} != {b.dtype}"
                )
        other_tok = tokenizer_digests(other.root)
        for file in sorted(set(ref_tok) | set(other_tok)):
            if file not in ref_tok or file not in other_tok:
                raise IncompatibleParentsError(
                    f"{pair}: tokenizer file {file!r} is present in only one of them"
                )
            if ref_tok[file] != other_tok[file]:
                raise IncompatibleParentsError(f"{pair}: tokenizer file {file!r} differs")
