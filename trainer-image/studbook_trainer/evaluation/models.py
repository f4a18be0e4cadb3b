"""The models an evaluation runs: loaded from a local directory, or built from other models.

Two kinds, each a small interface the tasks use (and user-defined tasks may use as well):

* :class:`Classifier`: ``predict_proba(texts, pairs)`` gives class probabilities;
* :class:`LanguageModel`: ``token_logprobs`` scores token sequences, ``next_logprobs`` gives the
  distribution of the next token, and :func:`greedy_generate` decodes with either.

Loaded models (:func:`load_classifier`, :func:`load_language_model`) read a Hugging Face
directory (safetensors, config, tokenizer) and refuse one whose checkpoint lacks weights the task
needs, with one exception: an encoder without a classification head can be scored through a
linear probe fitted on labelled examples (:class:`Probe`), the protocol MTEB uses for encoders.
:class:`ClassifierEnsemble` and :class:`LanguageModelEnsemble` average their members'
probabilities; :class:`PriorClassifier` predicts a fixed class distribution (the majority-class
baseline). Every forward pass runs batched under :func:`torch.inference_mode`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.nn import functional

from studbook_trainer.evaluation.errors import MissingWeightsError, ModelLoadError

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@runtime_checkable
class Classifier(Protocol):
    """A model that gives class probabilities for texts."""

    @property
    def num_labels(self) -> int:
        """How many classes it predicts."""
        ...

    @property
    def label2id(self) -> Mapping[str, int]:
        """Class index by label name."""
        ...

    @property
    def parameters(self) -> int:
        """Parameter count (0 for models without weights)."""
        ...

    @property
    def size_bytes(self) -> int:
        """Weight bytes."""
        ...

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> FloatArray:
        """Class probabilities, shape ``(len(texts), num_labels)``, rows in input order."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model over one tokenizer."""

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (a ``transformers`` tokenizer)."""
        ...

    @property
    def parameters(self) -> int:
        """Parameter count."""
        ...

    @property
    def size_bytes(self) -> int:
        """Weight bytes."""
        ...

    def token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(ids[:, t+1] | ids[:, :t+1])`` for every position, shape ``(B, T-1)``."""
        ...

    def next_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the token after each (unpadded) row, shape ``(B, vocab)``."""
        ...


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _size(model: torch.nn.Module) -> tuple[int, int]:
    """Parameter count and weight bytes, quantized weights (buffers) included.

    A packed int4 weight counts the values it holds, two a byte.
    """
    from studbook_trainer.operators.compress import Int4Embedding, Int4Linear

    stored: list[tuple[torch.Tensor, int]] = [(p, p.numel()) for p in model.parameters()]
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in ("weight", "weight_scale", "weight_zero"):
                continue
            values = buffer.numel()
            if name == "weight" and isinstance(module, Int4Linear):
                values = module.in_features * module.out_features
            elif name == "weight" and isinstance(module, Int4Embedding):
                values = module.num_embeddings * module.embedding_dim
            stored.append((buffer, values))
    seen: set[int] = set()
    count = size = 0
    for p, values in stored:
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        count += values
        size += p.numel() * p.element_size()
    return count, size


def _load(
    path: Path, auto: Any, device: str, what: str, head: set[str] | None = None, **config: Any
) -> tuple[Any, Any]:
    """Load model and tokenizer; refuse a checkpoint that lacks weights the model needs.

    Missing weights named in ``head`` are allowed: the caller fits them.
    """
    from transformers import AutoTokenizer

    _quiet_transformers()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model, info = auto.from_pretrained(
            path, local_files_only=True, output_loading_info=True, **config
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load a {what}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or ())
    if missing and not (head is not None and set(missing) <= head):
        raise MissingWeightsError(
            f"{path}: the checkpoint lacks weights a {what} needs: {', '.join(missing[:8])}"
        )
    model.to(device)
    model.eval()
    return model, tokenizer


def _max_length(tokenizer: Any, config: Any) -> int:
    limits = [int(getattr(tokenizer, "model_max_length", 0) or 0)]
    limits.append(int(getattr(config, "max_position_embeddings", 0) or 0))
    usable = [n for n in limits if 0 < n < 1_000_000]
    return min(usable) if usable else 512


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class HFClassifier:
    """A sequence classifier loaded from a local transformers directory."""

    model: Any
    """The ``AutoModelForSequenceClassification`` model."""
    tokenizer: Any
    """Its tokenizer."""
    device: str = "cpu"
    """Where it runs."""
    batch_size: int = 64
    """Examples per forward pass."""
    probed: bool = False
    """Whether its head was fitted by a linear probe rather than loaded."""

    @property
    def num_labels(self) -> int:
        """How many classes it predicts."""
        return int(self.model.config.num_labels)

    @property
    def label2id(self) -> Mapping[str, int]:
        """Class index by label name, from the model's config."""
        return {str(k): int(v) for k, v in (self.model.config.label2id or {}).items()}

    @property
    def parameters(self) -> int:
        """Parameter count."""
        return _size(self.model)[0]

    @property
    def size_bytes(self) -> int:
        """Weight bytes."""
        return _size(self.model)[1]

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> FloatArray:
        """Class probabilities, batched by length, under inference mode."""
        limit = _max_length(self.tokenizer, self.model.config)
        encoded = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=limit,
        )
        ids: list[list[int]] = encoded["input_ids"]
        types: list[list[int]] | None = encoded.get("token_type_ids")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = np.zeros((len(ids), self.num_labels), dtype=np.float64)
        with torch.inference_mode():
            for batch in _batches([len(r) for r in ids], self.batch_size):
                input_ids, mask = _pad([ids[i] for i in batch], pad_id, self.device)
                kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask}
                if types is not None:
                    kwargs["token_type_ids"] = _pad([types[i] for i in batch], 0, self.device)[0]
                logits = self.model(**kwargs).logits.float()
                out[batch] = torch.softmax(logits, dim=-1).double().cpu().numpy()
        return out


@dataclass
class ClassifierEnsemble:
    """The output ensemble of classifiers: the mean of their class probabilities."""

    members: Sequence[Classifier]
    """The classifiers, with the same classes."""

    def __post_init__(self) -> None:
        if not self.members:
            raise ModelLoadError("an ensemble needs members")
        if len({m.num_labels for m in self.members}) != 1:
            raise ModelLoadError("ensemble members predict different numbers of classes")
        if any(dict(m.label2id) != dict(self.members[0].label2id) for m in self.members):
            raise ModelLoadError("ensemble members name their classes differently")

    @property
    def num_labels(self) -> int:
        """How many classes it predicts."""
        return self.members[0].num_labels

    @property
    def label2id(self) -> Mapping[str, int]:
        """The first member's label names."""
        return self.members[0].label2id

    @property
    def parameters(self) -> int:
        """Parameters of all members."""
        return sum(m.parameters for m in self.members)

    @property
    def size_bytes(self) -> int:
        """Weight bytes of all members."""
        return sum(m.size_bytes for m in self.members)

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> FloatArray:
        """The mean of the members' probabilities."""
        probs = np.mean([m.predict_proba(texts, pairs) for m in self.members], axis=0)
        return np.asarray(probs, dtype=np.float64)


@dataclass
class PriorClassifier:
    """Predicts one fixed class distribution for every input (the majority-class baseline)."""

    prior: FloatArray
    """The class distribution; its argmax is the predicted class."""
    label2id: Mapping[str, int] = field(default_factory=dict)
    """Class index by label name."""
    parameters: int = 0
    """No parameters."""
    size_bytes: int = 0
    """No weights."""

    @property
    def num_labels(self) -> int:
        """How many classes it predicts."""
        return int(self.prior.shape[0])

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> FloatArray:
        """The prior, once per input."""
        return np.tile(self.prior, (len(texts), 1))


@dataclass
class HFLanguageModel:
    """A causal language model loaded from a local transformers directory."""

    model: Any
    """The ``AutoModelForCausalLM`` model."""
    tokenizer: Any
    """Its tokenizer."""
    device: str = "cpu"
    """Where it runs."""

    @property
    def parameters(self) -> int:
        """Parameter count."""
        return _size(self.model)[0]

    @property
    def size_bytes(self) -> int:
        """Weight bytes."""
        return _size(self.model)[1]

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).logits
        return logits

    def token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(ids[:, t+1] | ids[:, :t+1])``, shape ``(B, T-1)`` (right padding only)."""
        logits = self._logits(ids, mask)[:, :-1].float()
        target = ids[:, 1:].to(logits.device)
        nll = functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        return (-nll).cpu()

    def next_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next token after each row (rows of equal length)."""
        logits = self._logits(ids, torch.ones_like(ids))[:, -1].float()
        return torch.log_softmax(logits, dim=-1).cpu()


@dataclass
class LanguageModelEnsemble:
    """The output ensemble of language models over one tokenizer: mean next-token probabilities."""

    members: Sequence[LanguageModel]
    """The language models."""

    def __post_init__(self) -> None:
        if not self.members:
            raise ModelLoadError("an ensemble needs members")

    @property
    def tokenizer(self) -> Any:
        """The first member's tokenizer (all members must share it)."""
        return self.members[0].tokenizer

    @property
    def parameters(self) -> int:
        """Parameters of all members."""
        return sum(m.parameters for m in self.members)

    @property
    def size_bytes(self) -> int:
        """Weight bytes of all members."""
        return sum(m.size_bytes for m in self.members)

    def _mean(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.logsumexp(torch.stack(list(parts)), dim=0) - math.log(len(parts))

    def token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log of the mean of the members' token probabilities."""
        return self._mean([m.token_logprobs(ids, mask) for m in self.members])

    def next_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """Log of the mean of the members' next-token distributions."""
        return self._mean([m.next_logprobs(ids) for m in self.members])


@dataclass(frozen=True)
class Probe:
    """Labelled examples to fit a linear head on, for an encoder that has none."""

    texts: Sequence[str]
    """Example inputs."""
    labels: Sequence[int]
    """Their class indices."""
    num_labels: int
    """Classes of the fitted head."""


def _head_module(model: Any) -> torch.nn.Linear | None:
    """The classification head when it is a single linear layer (BERT-style)."""
    for name in ("classifier", "score"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Linear):
            return module
    return None


def _fit_probe(model: Any, tokenizer: Any, probe: Probe, device: str) -> None:
    """Fit the linear head on the frozen encoder's features.

    L2-regularised logistic regression, full-batch L-BFGS from zeros: the fit is deterministic.
    """
    head = _head_module(model)
    assert head is not None
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        with torch.inference_mode():
            limit = _max_length(tokenizer, model.config)
            for start in range(0, len(probe.texts), 64):
                batch = tokenizer(
                    list(probe.texts[start : start + 64]),
                    truncation=True,
                    max_length=limit,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                model(**batch)
    finally:
        hook.remove()
    features = torch.cat(captured).float().clone()
    target = torch.tensor(list(probe.labels), device=features.device)
    weight = torch.zeros(probe.num_labels, features.shape[1], requires_grad=True)
    bias = torch.zeros(probe.num_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(features @ weight.T + bias, target)
        loss = loss + 1e-3 * weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_(bias.to(head.bias.dtype))


def _load_quantized(path: Path, device: str) -> tuple[Any, Any] | None:
    """Model and tokenizer of a ``quantize`` output; ``None`` for any other directory.

    Its int8 or int4 layers are kept and dequantized on the fly; a package whose layout does not
    load is a :class:`ModelLoadError`.
    """
    from studbook_trainer.operators.base import OperatorError
    from studbook_trainer.operators.compress import QUANT_CONFIG, load_quantized

    if not (path / QUANT_CONFIG).is_file():
        return None
    _quiet_transformers()
    try:
        return load_quantized(path, device)
    except OperatorError as error:
        raise ModelLoadError(f"{path}: {error}") from None


def load_classifier(
    path: Path, *, device: str = "cpu", batch_size: int = 64, probe: Probe | None = None
) -> HFClassifier:
    """Load a sequence classifier (model with its head, and tokenizer) from a directory.

    A ``quantize`` output keeps its int8 or int4 layers (``load_quantized``).

    A checkpoint without a classification head (an encoder such as a sentence-transformers
    model) is refused, unless ``probe`` is given: then a linear head is fitted on the frozen
    encoder's features and :attr:`HFClassifier.probed` is set.
    """
    from transformers import AutoModelForSequenceClassification

    if (quantized := _load_quantized(path, device)) is not None:
        return HFClassifier(*quantized, device=device, batch_size=batch_size)
    try:
        model, tokenizer = _load(path, AutoModelForSequenceClassification, device, "classifier")
        return HFClassifier(model, tokenizer, device=device, batch_size=batch_size)
    except MissingWeightsError:
        if probe is None:
            raise
    model, tokenizer = _load(
        path,
        AutoModelForSequenceClassification,
        device,
        "classifier",
        head={f"{n}.{w}" for n in ("classifier", "score") for w in ("weight", "bias")},
        num_labels=probe.num_labels,
    )
    if _head_module(model) is None:
        raise ModelLoadError(f"{path}: a linear probe needs a single linear classification head")
    _fit_probe(model, tokenizer, probe, device)
    return HFClassifier(model, tokenizer, device=device, batch_size=batch_size, probed=True)


def load_language_model(path: Path, *, device: str = "cpu") -> HFLanguageModel:
    """Load a causal language model (or a ``quantize`` output) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    if (quantized := _load_quantized(path, device)) is not None:
        model, tokenizer = quantized
    else:
        model, tokenizer = _load(path, AutoModelForCausalLM, device, "causal language model")
    return HFLanguageModel(model, tokenizer, device=device)


def build_model(
    path: Path, kind: str, *, dtype: torch.dtype, device: str = "cpu", batch_size: int = 64
) -> HFClassifier | HFLanguageModel:
    """A model of a directory's ``config.json`` and tokenizer, its checkpoint left unread.

    Its weights are freshly initialised: the caller loads its own with :func:`load_weights`
    (a search's trials load each merged recipe into one model held in memory). ``kind`` is
    ``classification`` or ``causal-lm``; ``dtype`` is the dtype its weights are held in, as a
    checkpoint of that dtype would be loaded; ``batch_size`` the examples per forward pass of a
    classifier.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    _quiet_transformers()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    auto: Any = (
        AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = auto.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot build a {kind} model: {exc}") from exc
    model.to(device)
    model.eval()
    if kind == "classification":
        return HFClassifier(model, tokenizer, device=device, batch_size=batch_size)
    return HFLanguageModel(model, tokenizer, device=device)


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a checkpoint's tensors into a model, by name; refuse one that does not fit it.

    Every weight of the model must be given, bar those tied to a given one (a language model's
    head tied to its embeddings): a missing one is a :class:`MissingWeightsError`. A floating
    tensor the model has no place for is refused too (a checkpoint that names its tensors
    otherwise than the model does); other stray tensors (an old checkpoint's integer
    ``position_ids``, now a buffer the model computes) are left out.
    """
    own = model.state_dict()
    stray = [k for k, t in state.items() if k not in own and t.is_floating_point()]
    if stray:
        raise ModelLoadError(
            f"the checkpoint names tensors the model does not have: {', '.join(stray[:8])}"
        )
    given = {k: t for k, t in state.items() if k in own}
    loaded = {own[k].data_ptr() for k in given}
    missing = [k for k in own if k not in given and own[k].data_ptr() not in loaded]
    if missing:
        raise MissingWeightsError(
            f"the checkpoint lacks weights the model needs: {', '.join(missing[:8])}"
        )
    model.load_state_dict(given, strict=False)


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else end of sequence, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def score_sequences(
    model: LanguageModel,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    *,
    batch_size: int = 16,
) -> tuple[FloatArray, FloatArray]:
    """Negative log-likelihood summed over the tokens from ``starts[i]`` on, and their count.

    Token ``t`` of a sequence is scored given tokens ``< t``; the first token is never scored.
    """
    nll = np.zeros(len(sequences), dtype=np.float64)
    counts = np.zeros(len(sequences), dtype=np.float64)
    fill = pad_id(model.tokenizer)
    with torch.inference_mode():
        for batch in _batches([len(s) for s in sequences], batch_size):
            ids, mask = _pad([sequences[i] for i in batch], fill, "cpu")
            logprobs = model.token_logprobs(ids, mask).double()
            for row, i in enumerate(batch):
                first = max(int(starts[i]), 1) - 1
                last = len(sequences[i]) - 1
                nll[i] = -float(logprobs[row, first:last].sum())
                counts[i] = max(last - first, 0)
    return nll, counts


def greedy_generate(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    max_new: Sequence[int],
    *,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy continuations of token prompts, at most ``max_new[i]`` tokens, stopping at EOS.

    Prompts of equal length share a batch, so no padding ever enters the model.
    """
    eos = model.tokenizer.eos_token_id
    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    with torch.inference_mode():
        for length in sorted(groups):
            members = groups[length]
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                ids = torch.tensor([list(prompts[i]) for i in batch], dtype=torch.long)
                done = [max_new[i] <= 0 for i in batch]
                for _ in range(max(max_new[i] for i in batch)):
                    if all(done):
                        break
                    nxt = model.next_logprobs(ids).argmax(dim=-1)
                    for row, i in enumerate(batch):
                        if done[row]:
                            continue
                        token = int(nxt[row])
                        if eos is not None and token == eos:
                            done[row] = True
                            continue
                        out[i].append(token)
                        done[row] = len(out[i]) >= max_new[i]
                    ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
    return out
