"""Step results: small JSON documents a Job leaves in the store for whoever runs the pipeline."""

from __future__ import annotations

import os
import uuid
from typing import TypeVar

import fsspec
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def write_result(uri: str, result: BaseModel) -> None:
    """Write a result so that a reader sees all of it or nothing."""
    data = result.model_dump_json(by_alias=True, exclude_none=True).encode()
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    if "file" in fs.protocol:
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    else:
        # Object stores publish an object only once it is written whole.
        fs.pipe_file(path, data)


def read_result(uri: str, model: type[M]) -> M | None:
    """A result, or ``None`` if none was written. A malformed one raises pydantic's error."""
    try:
        with fsspec.open(uri, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    return model.model_validate_json(raw)
