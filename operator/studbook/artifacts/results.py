"""Step records and outputs: small documents in the store, and reading what a step wrote.

Records are written by whoever runs the pipeline. A step's output is untrusted:
:func:`read_untrusted` opens no link, no device or pipe, and reads a bounded number of bytes.
"""

from __future__ import annotations

import os
import stat
import uuid
from typing import TypeVar

import fsspec
from pydantic import BaseModel

from studbook.artifacts.errors import PackageFormatError

M = TypeVar("M", bound=BaseModel)


def write_result(uri: str, result: BaseModel) -> None:
    """Write a result so that a reader sees all of it or nothing."""
    write_bytes(uri, wire_bytes(result))


def wire_bytes(result: BaseModel) -> bytes:
    """A document's bytes as :func:`write_result` writes them."""
    return result.model_dump_json(by_alias=True, exclude_none=True).encode()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file so that a reader sees all of it or nothing."""
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


def read_untrusted(uri: str, limit: int) -> bytes | None:
    """The bytes of a file an untrusted step wrote, or ``None`` if there is none.

    A local file must be a regular file reached without following a link at its end (the step
    could point one at a key) and open without blocking (a pipe would hang the reader); either
    way it must not be larger than ``limit``. Each refusal is a :class:`PackageFormatError`.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    if "file" in fs.protocol:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise PackageFormatError(f"{uri} cannot be opened as a plain file: {error}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise PackageFormatError(f"{uri} is not a regular file")
            data = handle.read(limit + 1)
    else:
        try:
            with fs.open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            return None
    if len(data) > limit:
        raise PackageFormatError(f"{uri} is larger than {limit} bytes")
    return data
