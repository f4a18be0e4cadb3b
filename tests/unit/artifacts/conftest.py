from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from studbook.artifacts import Lineage, Store

from .pki import CA, KeyPair, new_key


def fake_safetensors(n_floats: int, seed: int) -> bytes:
    """Bytes shaped like a safetensors file: 8-byte header length, JSON header, data."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    data = hashlib.sha256(str(seed).encode()).digest() * (4 * n_floats // 32 + 1)
    return len(header).to_bytes(8, "little") + header + data[: 4 * n_floats]


def lineage(*parents: str, operator: str = "import") -> Lineage:
    return Lineage(
        parents=parents,
        operator=operator,
        config_hash="sha256:" + "0" * 64,
        dataset_digests={"train": "sha256:" + "1" * 64} if parents else {},
        code_version="studbook-trainer 0.1.0",
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store")


@pytest.fixture
def model_dir(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(files: dict[str, bytes] | None = None, seed: int = 0) -> Path:
        d = tmp_path / f"model-{next(counter)}"
        d.mkdir()
        files = files or {
            "model.safetensors": fake_safetensors(4096, seed),
            "config.json": b'{"architectures":["BertModel"]}',
            "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        }
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        return d

    return make


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return new_key(tmp_path, "signer")


@pytest.fixture
def other_key(tmp_path: Path) -> KeyPair:
    return new_key(tmp_path, "intruder")


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA.create(tmp_path)
