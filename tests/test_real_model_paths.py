"""What real Hugging Face checkpoints bring, exercised with ``builtin:tiny-bpe``: a BPE tokenizer that adds a
BOS, a chat template that writes its own, two EOS ids, no pad token, bf16 weights, a generation_config.json
with sampling settings of its own, and prompts longer than the limit."""

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.data import load_task
from rlkit.models import build_char_tokenizer, builtin_tiny_bpe_path, load_model, load_tokenizer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bpe_path(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLKIT_CACHE", str(cache))
        return builtin_tiny_bpe_path()


@pytest.fixture(scope="module")
def tok(bpe_path):
    return load_tokenizer(bpe_path)


@pytest.fixture
def model(bpe_path):
    return load_model(bpe_path, "bfloat16").eval()


def ids_of(tok, *tokens):
    return tok.convert_tokens_to_ids(list(tokens))


# ---------------------------------------------------------------- the checkpoint


def test_tiny_bpe_is_a_llama3_shaped_bf16_checkpoint(bpe_path):
    tok = AutoTokenizer.from_pretrained(bpe_path)
    model = AutoModelForCausalLM.from_pretrained(bpe_path)
    assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size == 512
    assert model.config.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    with safe_open(bpe_path / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert tok.pad_token is None and tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"
    assert model.generation_config.eos_token_id == ids_of(tok, "<|end_of_text|>", "<|eot_id|>")


def test_bpe_tokenizer_adds_one_bos_and_round_trips_text(bpe_path):
    tok = AutoTokenizer.from_pretrained(bpe_path)
    text = "Two  spaces,\ta tab\nnew lines\n\n 37+45=82 é\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[1:]) == text
    assert len(ids) - 1 < len(text.encode())  # merges: fewer tokens than bytes


def test_pad_falls_back_to_eos(bpe_path, tok):
    assert AutoTokenizer.from_pretrained(bpe_path).pad_token is None
    assert tok.pad_token == tok.eos_token == "<|eot_id|>" and tok.padding_side == "left"
    assert build_char_tokenizer().pad_token == "<pad>"  # a tokenizer with a pad token keeps it


# ---------------------------------------------------------------- prompts


def test_addition_chat_task_is_the_addition_task_as_user_messages():
    plain = load_task("builtin:addition", None, None, seed=3, eval_size=50)
    chat = load_task("builtin:addition_chat", None, None, seed=3, eval_size=50)
    for split in ("train", "eval"):
        a, b = getattr(plain, split), getattr(chat, split)
        assert b["prompt"][:] == [[{"role": "user", "content": p}] for p in a["prompt"]]
        assert b["answer"][:] == a["answer"][:]
