"""The streaming merge engine: one tensor at a time from lazily opened parents into shards.

Peak memory is a few row chunks per parent, plus one float32 copy of one tensor for methods
that rank a whole task vector (TIES, breadcrumbs). Output bytes depend only on the inputs, the
plan and the compute device type.

Both ways to merge share one path per tensor: :func:`schedule` resolves and checks every
tensor's coefficients before any tensor data is read, and :meth:`Schedule.pieces` runs the
method on one tensor's inputs. :func:`merge` streams parents from files into shards;
:func:`merge_state` merges parents held in memory into a state dict (a search's trials), with the
same values the file would hold.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studbook_trainer.merge.compat import TOKENIZER_FILES, check_compatible
from studbook_trainer.merge.inputs import MemoryInputs, ReaderInputs, TensorInputs
from studbook_trainer.merge.io import (
    CODES,
    DTYPES,
    FLOATING,
    ModelReader,
    OutputTensor,
    ShardedWriter,
)
from studbook_trainer.merge.methods import MergeConfigError, MergeMethod, get_method
from studbook_trainer.merge.plan import MergePlan, TensorParams, layer_index

log = logging.getLogger(__name__)

_DTYPE_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
COPIED_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
"""Small files copied from the base (else the first parent) into the output."""


@dataclass(frozen=True)
class MergeReport:
    """What a merge did."""

    method: str
    tensors: int
    bytes_written: int
    seconds: float
    device: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {**self.outcome(), "seconds": round(self.seconds, 3)}

    def outcome(self) -> dict[str, Any]:
        """What the inputs decide, without the timing: fit to be sealed into a package."""
        return {
            "method": self.method,
            "tensors": self.tensors,
            "bytesWritten": self.bytes_written,
            "device": self.device,
        }


def _release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps it in per-thread arenas otherwise).

    Chunks are allocated in the reader thread and freed in the compute thread, so without this the
    arenas' free lists grow with the number of tensors processed, not with the largest tensor.
    """
    if _TRIM is not None:
        _TRIM(0)


def _load_trim() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _load_trim()


class _BackgroundWriter:
    """Feeds a :class:`ShardedWriter` from a thread, so disk writes overlap computing."""

    def __init__(self, writer: ShardedWriter, depth: int = 4) -> None:
        self.writer = writer
        self.total_size = writer.total_size
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="studbook-merge-write")
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                kind, payload = item
                if kind == "begin":
                    self.writer.begin(payload)
                elif kind == "write":
                    self.writer.write(payload)
                else:
                    self.writer.close()
            except BaseException as e:
                self._error = e

    def _put(self, kind: str, payload: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((kind, payload))

    def begin(self, name: str) -> None:
        """Start the next tensor."""
        self._put("begin", name)

    def write(self, piece: torch.Tensor) -> None:
        """Queue the next piece (moved to the CPU first)."""
        self._put("write", piece.cpu())

    def close(self) -> None:
        """Finish writing; raises what the writer thread raised."""
        self._put("close", None)
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the thread and close the open shard."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()
        self.writer.abort()


def pick_device(requested: str) -> torch.device:
    """``auto``: the first CUDA device when present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def num_layers(config: Mapping[str, Any] | None, names: Sequence[str]) -> int:
    """The model's numbered layers: from its ``config.json``, else from its tensor names."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if config and isinstance(config.get(key), int):
            return int(config[key])
    indices = [i for n in names if (i := layer_index(n)) is not None]
    return max(indices) + 1 if indices else 1


def check_plan(plan: MergePlan) -> MergeMethod:
    """The plan's method, once its parents, base and output dtype are found fit for it."""
    method = get_method(plan.method)
    method.check_shape(len(plan.parents), plan.base is not None)
    if plan.dtype is not None and plan.dtype not in _DTYPE_NAMES:
        raise MergeConfigError(f"unsupported output dtype {plan.dtype!r}")
    return method


@dataclass(frozen=True)
class Schedule:
    """What a merge makes of every tensor, decided before any tensor data is read."""

    method: MergeMethod
    """The plan's method."""
    outputs: tuple[OutputTensor, ...]
    """Every output tensor (the reference's, in its order), with its output dtype."""
    params: Mapping[str, TensorParams]
    """The checked coefficients of every merged (floating) tensor; the others are copied from
    the reference."""

    def pieces(self, inputs: TensorInputs, output: OutputTensor) -> Iterator[torch.Tensor]:
        """The merged row chunks of one tensor, in order, in its output dtype."""
        dtype = DTYPES[output.dtype]
        for piece in self.method.merge_tensor(inputs, self.params[output.name]):
            yield piece.to(dtype)


def schedule(
    plan: MergePlan, reference: Sequence[OutputTensor], config: Mapping[str, Any] | None
) -> Schedule:
    """Resolve and check the coefficients of every tensor of the reference model.

    ``reference`` lists the tensors of the base (else of the first parent) as stored: name,
    dtype code and shape; ``config`` is its ``config.json``, which gives the layer count that
    per-layer coefficients are spread over. A bad coefficient is refused here, naming it.
    """
    method = check_plan(plan)
    layers = num_layers(config, [t.name for t in reference])
    defaults = method.defaults()
    params: dict[str, TensorParams] = {}
    for t in reference:
        if t.dtype in FLOATING:
            tp = plan.tensor_params(t.name, layers, defaults)
            method.check_params(tp, t.name)
            params[t.name] = tp
    outputs = tuple(
        OutputTensor(
            t.name,
            _DTYPE_NAMES[plan.dtype] if plan.dtype is not None and t.name in params else t.dtype,
            t.shape,
        )
        for t in reference
    )
    return Schedule(method, outputs, params)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Torch's intra-op CPU threads set to ``n`` for the block (see ``MergePlan.threads``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merge(
    plan: MergePlan,
    out_dir: Path,
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> MergeReport:
    """Merge ``plan`` into ``out_dir`` (created; must not exist or be empty).

    Incompatible parents and bad coefficients are refused before any tensor data is read.
    """
    started = time.monotonic()
    method = check_plan(plan)
    device = pick_device(plan.device)
    with _threads(plan.threads):
        return _merge(plan, out_dir, method, device, progress, started)


def _merge(
    plan: MergePlan,
    out_dir: Path,
    method: MergeMethod,
    device: torch.device,
    progress: Callable[[int, int, str], None] | None,
    started: float,
) -> MergeReport:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    with ExitStack() as stack:
        parents = [stack.enter_context(ModelReader(p.path)) for p in plan.parents]
        base = stack.enter_context(ModelReader(plan.base.path)) if plan.base else None
        models = [(p.name, r) for p, r in zip(plan.parents, parents, strict=True)]
        if plan.base is not None and base is not None:
            models.insert(0, (plan.base.name, base))
        check_compatible(models, allow_dtype_mismatch=plan.dtype is not None)
        ref = models[0][1]
        scheduled = schedule(
            plan, [OutputTensor(n, i.dtype, i.shape) for n, i in ref.tensors.items()], ref.config
        )
        outputs = scheduled.outputs
        log.info(
            "merging %d tensors of %d parents%s with %s on %s",
            len(outputs),
            len(parents),
            " and a base" if base is not None else "",
            method.name,
            device,
        )
        writer = _BackgroundWriter(
            ShardedWriter(out_dir, outputs, max_shard_bytes=plan.max_shard_bytes)
        )
        try:
            for n, out in enumerate(outputs):
                writer.begin(out.name)
                if out.name not in scheduled.params:
                    writer.write(ref.get(out.name))
                else:
                    inputs = ReaderInputs(out.name, parents, base, device, plan.seed)
                    for piece in scheduled.pieces(inputs, out):
                        writer.write(piece)
                _release_free_memory()
                if progress is not None:
                    progress(n + 1, len(outputs), out.name)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        for file in COPIED_FILES:
            if (ref.root / file).is_file():
                shutil.copyfile(ref.root / file, out_dir / file)
        if plan.dtype is not None and (out_dir / "config.json").is_file():
            config = json.loads((out_dir / "config.json").read_text())
            for key in ("torch_dtype", "dtype"):
                if key in config:
                    config[key] = plan.dtype
            (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return MergeReport(
        method=method.name,
        tensors=len(outputs),
        bytes_written=writer.total_size,
        seconds=time.monotonic() - started,
        device=str(device),
    )


def merge_state(
    plan: MergePlan,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    config: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Merge parents held in memory into a new state dict, as :func:`merge` would into files.

    ``states`` holds every parent's and the base's tensors by parent name (as stored: the names
    and dtypes of their checkpoints); ``config`` is the reference's ``config.json``. The plan's
    parent paths are not read. The result holds the values :func:`merge` would write, tensor for
    tensor, on the plan's device (tensors that are not merged are the reference's own, not
    copies). Checking the parents' compatibility (:func:`check_compatible` over their
    readers) is the caller's: it holds them for many merges and checks them once.
    """
    check_plan(plan)
    missing = [p.name for p in plan.all_parents() if p.name not in states]
    if missing:
        raise MergeConfigError(f"no tensors of {', '.join(missing)} are held")
    device = pick_device(plan.device)
    ref = states[plan.base.name if plan.base is not None else plan.parents[0].name]
    scheduled = schedule(
        plan, [OutputTensor(n, CODES[t.dtype], tuple(t.shape)) for n, t in ref.items()], config
    )
    merged: dict[str, torch.Tensor] = {}
    with _threads(plan.threads):
        for out in scheduled.outputs:
            if out.name not in scheduled.params:
                merged[out.name] = ref[out.name]
                continue
            inputs = MemoryInputs(
                out.name,
                [states[p.name][out.name] for p in plan.parents],
                states[plan.base.name][out.name] if plan.base is not None else None,
                device,
                plan.seed,
            )
            tensor = torch.empty(out.shape, dtype=DTYPES[out.dtype], device=device)
            flat = tensor.view(-1)
            offset = 0
            for piece in scheduled.pieces(inputs, out):
                size = piece.numel()
                flat[offset : offset + size].copy_(piece.reshape(-1))
                offset += size
            merged[out.name] = tensor
    return merged
