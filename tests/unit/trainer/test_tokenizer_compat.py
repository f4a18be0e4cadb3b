"""Tokenizer comparison for merges: what a tokenizer does counts, how it was loaded does not."""

from __future__ import annotations

import json
from pathlib import Path

from studbook_trainer.merge.compat import tokenizer_digests


def _tokenizer(root: Path, **config: object) -> Path:
    root.mkdir()
    base = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (root / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    return root


def test_load_context_fields_are_ignored(tmp_path: Path) -> None:
    a = _tokenizer(tmp_path / "a", local_files_only=True, is_local=True, name_or_path="/x")
    b = _tokenizer(tmp_path / "b", local_files_only=False, name_or_path="/y")
    assert tokenizer_digests(a) == tokenizer_digests(b)


def test_a_behavioural_difference_still_counts(tmp_path: Path) -> None:
    a = _tokenizer(tmp_path / "a")
    b = _tokenizer(tmp_path / "b", do_lower_case=False)
    assert tokenizer_digests(a) != tokenizer_digests(b)
