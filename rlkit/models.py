"""Loading the policy, reference and tokenizer; the embedded tiny model.

``builtin:tiny`` is a ~1M-parameter Llama (hidden 128, 4 layers) with a character-level tokenizer built
locally, so rlkit runs with nothing downloaded. It is saved once, in Hugging Face format, under the
cache directory and then loaded exactly like a real model on a local path. A Llama architecture is used
on purpose: with ``model_type: qwen2`` transformers always loads ``Qwen2Tokenizer`` for the folder,
which silently drops spaces and newlines from a custom tokenizer.
"""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlkit.builtins import BUILTIN_TINY

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# ChatML-like, so conversational datasets work with the tiny model too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_dir() -> Path:
    """Where rlkit keeps built models and warm starts: $RLKIT_CACHE, else ~/.cache/rlkit."""
    return Path(os.environ.get("RLKIT_CACHE", Path.home() / ".cache" / "rlkit"))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (plus newline), and pad/bos/eos/unk."""
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def builtin_tiny_path() -> Path:
    """The saved folder of the tiny model (built on first use; the same weights every time)."""
    path = cache_dir() / "models" / "tiny-llama-char-v1"
    if not (path / "config.json").is_file():
        tokenizer = build_char_tokenizer()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        build_tiny_model(tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.replace(path)  # atomic, so concurrent first uses (several ranks) cannot see half a folder
        except OSError:
            shutil.rmtree(tmp)  # another process won the race
    return path


def resolve_model_path(path: str) -> Path:
    """``builtin:tiny`` or a local Hugging Face folder."""
    return builtin_tiny_path() if path == BUILTIN_TINY else Path(path)


def load_tokenizer(path: str | Path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: str = "float32"):
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
