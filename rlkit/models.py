"""Loading the policy, reference and tokenizer; the embedded tiny models.

``builtin:tiny`` is a ~1M-parameter Llama (hidden 128, 4 layers) with a character-level tokenizer built
locally, so rlkit runs with nothing downloaded. ``builtin:tiny-bpe`` is a smaller Llama shaped like a real
Llama 3 Instruct checkpoint, to exercise what real models bring: a byte-level BPE tokenizer that adds a
BOS token, a chat template that writes the BOS itself, two EOS ids, no pad token, bfloat16 weights, and
sampling defaults in its ``generation_config.json`` that rlkit must not inherit. Both are saved once, in
Hugging Face format, under the cache directory and then loaded exactly like a real model on a local path.
A Llama architecture is used on purpose: with ``model_type: qwen2`` transformers always loads
``Qwen2Tokenizer`` for the folder, which silently drops spaces and newlines from a custom tokenizer.
"""

from __future__ import annotations

import string
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import is_bitsandbytes_available

from rlkit.builtins import BUILTIN_POSITIONS, BUILTIN_TINY, BUILTIN_TINY_BPE, BUILTIN_TINY_TEACHER
from rlkit.cache import cache_dir, cached_folder, run_alone
from rlkit.recipe.schema import LoraSettings, ModelConfig

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# ChatML-like, so conversational datasets work with the tiny model too; the tools offered are listed by name
# (their whole JSON schemas would take most of its 256 positions), and a tool's message is a `<|tool|>` turn.
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>tools: {{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# builtin:tiny-bpe: Llama 3's special tokens and chat format (the template writes the BOS itself).
BOS, END_OF_TEXT, END_OF_TURN = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
BPE_SPECIAL_TOKENS = [BOS, END_OF_TEXT, "<|start_header_id|>", "<|end_header_id|>", END_OF_TURN]
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
BPE_VOCAB_SIZE = 512


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


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden: int = 128, layers: int = 4
) -> LlamaForCausalLM:
    positions = BUILTIN_POSITIONS[BUILTIN_TINY]  # builtin:tiny-teacher's too
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def bpe_corpus() -> Iterator[str]:
    """The fixed text the BPE merges are learned from: every addition problem with its answer, the
    chat headers, and some English and ASCII text so that any text still gets sensible merges."""
    for a in range(100):
        for b in range(100):
            yield f"{a}+{b}={a + b}\n"
    for role in ("system", "user", "assistant"):
        yield f"{role}\n\n" * 50
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "we",
        "add",
        "two",
        "numbers",
        "and",
        "write",
        "the",
        "answer",
        "below",
        "in",
        "one",
        "line",
        "because",
        "every",
        "step",
        "counts",
    ]
    for i in range(2000):  # a deterministic stream of sentences
        yield " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(8)).capitalize() + ".\n"
    yield string.printable


def build_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) trained here on
    :func:`bpe_corpus`; plain text gets a BOS (``TemplateProcessing``), EOS is the end of turn, no pad."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=BPE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(bpe_corpus(), trainer)
    bos = (BOS, backend.token_to_id(BOS))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[bos]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=END_OF_TURN)
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def build_tiny_bpe_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """Hidden 128, 2 layers, grouped-query attention, bfloat16 weights; EOS is end of text or end of
    turn, and the generation config carries Llama 3.1 Instruct's sampling defaults (temperature 0.6,
    top-p 0.9), which rlkit's rollouts must override."""
    vocab = tokenizer.get_vocab()
    eos = [vocab[END_OF_TEXT], vocab[END_OF_TURN]]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=BUILTIN_POSITIONS[BUILTIN_TINY_BPE],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).bfloat16()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, do_sample=True, temperature=0.6, top_p=0.9
    )
    return model


def build_tiny_teacher_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Wider and deeper than builtin:tiny (hidden 256, 6 layers, ~6.3M parameters)."""
    return build_tiny_model(tokenizer, seed=1, hidden=256, layers=6)


# cache folder name -> (tokenizer builder, model builder); the same weights every time
SAVED_BUILTINS = {
    "tiny-llama-char-v2": (build_char_tokenizer, build_tiny_model),
    "tiny-llama-char-teacher-v2": (build_char_tokenizer, build_tiny_teacher_model),
    "tiny-llama-bpe-v1": (build_bpe_tokenizer, build_tiny_bpe_model),
}


def save_builtin(name: str, folder: Path) -> None:
    """Build the built-in model ``name`` (a key of SAVED_BUILTINS) and save it with its tokenizer."""
    build_tokenizer, build_model = SAVED_BUILTINS[name]
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _saved_once(name: str) -> Path:
    """The cache folder of built-in model ``name``, built on first use in a plain child process."""
    return cached_folder(cache_dir() / "models" / name, lambda tmp: run_alone(["rlkit.models", name, str(tmp)]))


def builtin_tiny_path() -> Path:
    """The saved folder of ``builtin:tiny``."""
    return _saved_once("tiny-llama-char-v2")


def builtin_tiny_teacher_path() -> Path:
    """The saved folder of ``builtin:tiny-teacher``: builtin:tiny's tokenizer and a larger model
    (:func:`build_tiny_teacher_model`), to be warm-started to high accuracy as an OPD teacher."""
    return _saved_once("tiny-llama-char-teacher-v2")


def builtin_tiny_bpe_path() -> Path:
    """The saved folder of ``builtin:tiny-bpe``."""
    return _saved_once("tiny-llama-bpe-v1")


def resolve_model_path(path: str) -> Path:
    """A built-in model's folder (built on first use), or a local Hugging Face folder."""
    builtins = {
        BUILTIN_TINY: builtin_tiny_path,
        BUILTIN_TINY_BPE: builtin_tiny_bpe_path,
        BUILTIN_TINY_TEACHER: builtin_tiny_teacher_path,
    }
    return builtins[path]() if path in builtins else Path(path)


def load_tokenizer(path: str | Path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    if tokenizer.pad_token is None:
        # Pad positions are always masked out (attention mask 0, completion mask 0 after the first EOS), so
        # the pad id never reaches the model or the loss; reusing EOS adds no token (no embedding resize, the
        # checkpoint keeps its shape), as TRL's GRPOTrainer and SFTTrainer do. rlkit therefore never finds
        # padding by comparing ids with the pad id: with pad == EOS that would also hit real EOS tokens.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, then those ``model.generation_config``
    declares (an int or a list; Llama 3 Instruct lists end of text and end of turn), without repeats."""
    declared = model.generation_config.eos_token_id
    declared = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    return list(dict.fromkeys([tokenizer.eos_token_id, *declared]))


def attention_for(device: torch.device | None) -> str | None:
    """The attention implementation to load a model with on ``device``: ``"eager"`` on a CPU, where torch's
    SDPA kernels are the slower ones (64 rows x 64 new tokens of the large ``benchmarks/vs_trl.py`` model,
    one core: 1.36 s with SDPA and 0.96 s eager under bf16 autocast, 1.63 s and 1.58 s in fp32; its bf16
    update, 0.54 and 0.41 s per optimizer step); elsewhere (None) transformers' default."""
    return "eager" if device is not None and device.type == "cpu" else None


def load_model(path: str | Path, dtype: str = "float32", device: torch.device | None = None):
    """The model at ``path`` in ``dtype``, with the attention implementation for ``device``
    (:func:`attention_for`; None: transformers' default)."""
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attention_for(device)
    )


def check_quantization_support(lora: LoraSettings | None) -> None:
    """Stop at start-up, before any warm start, if the recipe asks for QLoRA where it cannot run."""
    if lora is None or not lora.load_in_4bit:
        return
    if not torch.cuda.is_available():
        raise RuntimeError("model.lora.load_in_4bit: 4-bit weights (bitsandbytes) need a CUDA device, none found")
    if not is_bitsandbytes_available():
        raise RuntimeError("model.lora.load_in_4bit: bitsandbytes is not installed (pip install bitsandbytes)")


def load_policy(path: str | Path, model_cfg: ModelConfig, device: torch.device):
    """The model to train: the one at ``path``, or with ``model_cfg.lora`` a peft model whose LoRA
    adapters alone require grad (on a 4-bit base with ``load_in_4bit``, placed on ``device`` at load)."""
    lora = model_cfg.lora
    if lora is None:
        return load_model(path, model_cfg.dtype, device)
    dtype = getattr(torch, model_cfg.dtype)
    if lora.load_in_4bit:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        base = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, quantization_config=quantization, device_map={"": device}
        )
    else:
        base = load_model(path, model_cfg.dtype, device)
    config = LoraConfig(task_type="CAUSAL_LM", **lora.model_dump(exclude={"load_in_4bit"}))
    return get_peft_model(base, config)


if __name__ == "__main__":
    save_builtin(sys.argv[1], Path(sys.argv[2]))
