"""Checks of a local model folder that read only its small JSON files: no weights, no transformers.

``rlkit check`` runs :func:`check_model_folder`, so a folder that cannot work (no config.json, no tokenizer,
a tokenizer that can produce ids the model has no embedding for) fails in a second rather than after
loading the weights, or in the middle of training on the first prompt with such a token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from rlkit.builtins import BUILTIN_POSITIONS

# Files transformers builds a tokenizer from. A sentencepiece tokenizer.model is protobuf, readable only
# with sentencepiece: for such a folder only the added tokens are checked.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def check_model_folder(path: str | Path) -> None:
    """Raise ValueError with the reason unless ``path`` holds a config.json and a tokenizer whose ids all
    have a row in the model's embedding (id < vocab_size)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json (not a Hugging Face model folder)")
    ids = token_ids(folder)
    size = vocab_size(folder)
    if not ids or size is None:
        return
    token, largest = max(ids.items(), key=lambda item: item[1])
    if largest >= size:
        raise ValueError(
            f"the tokenizer of {folder} has token {token!r} with id {largest}, but config.json's "
            f"vocab_size is {size}: the model has no embedding for ids >= {size}"
        )


def same_tokenizer(path_a: str | Path, path_b: str | Path) -> str | None:
    """None when the tokenizers of two model folders (a student and its teacher) turn text into the same
    ids; else the first difference found, in words."""
    a, b = Path(path_a), Path(path_b)
    ids_a, ids_b = token_ids(a), token_ids(b)

    def lowest_id(token: str) -> int:  # report the difference at the lowest id first
        return min(i for i in (ids_a.get(token), ids_b.get(token)) if i is not None)

    for token in sorted(ids_a.keys() | ids_b.keys(), key=lowest_id):
        if ids_a.get(token) != ids_b.get(token):
            return f"token {token!r} has id {ids_a.get(token)} in {a} and {ids_b.get(token)} in {b}"
    # The same vocabulary can still split text differently (normalisation, pre-tokenisation, BPE merges).
    json_a, json_b = _json(a / "tokenizer.json"), _json(b / "tokenizer.json")
    for part in ("normalizer", "pre_tokenizer", "model"):
        if json_a.get(part) != json_b.get(part):
            return f"the {part!r} of tokenizer.json differs between {a} and {b}"
    if _bytes(a / "tokenizer.model") != _bytes(b / "tokenizer.model"):
        return f"tokenizer.model differs between {a} and {b}"
    special_a, special_b = special_tokens(a), special_tokens(b)
    for name in SPECIAL_TOKENS:
        if special_a.get(name) != special_b.get(name):
            return f"{name} is {special_a.get(name)!r} in {a} and {special_b.get(name)!r} in {b}"
    return None


def token_ids(folder: Path) -> dict[str, int]:
    """Every token the folder's tokenizer knows, with its id: the vocabulary of tokenizer.json (else
    vocab.json) and the added tokens of added_tokens.json and tokenizer_config.json."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    ids = {}
    if (folder / "tokenizer.json").is_file():
        try:
            ids.update(Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True))
        except Exception as e:  # the tokenizers library raises plain Exception
            raise ValueError(f"{folder / 'tokenizer.json'} is not a tokenizer: {e}") from None
    elif (folder / "vocab.json").is_file():
        ids.update(_json(folder / "vocab.json"))
    ids.update(_json(folder / "added_tokens.json"))
    added = _json(folder / "tokenizer_config.json").get("added_tokens_decoder", {})
    ids.update({entry["content"]: int(i) for i, entry in added.items()})
    return ids


def vocab_size(folder: Path) -> int | None:
    """Rows of the model's input embedding, from config.json (under text_config for multimodal models);
    None if it does not say, and then nothing can be checked."""
    config = _json(folder / "config.json")
    size = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    return size if isinstance(size, int) else None


# config.json keys that bound the sequence length, by architecture (Llama/Qwen/Mistral, GPT-2, MPT, others)
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def positions_of(model: str) -> int | None:
    """Positions of a built-in model (rlkit.builtins) or of a local folder (:func:`max_positions`)."""
    return BUILTIN_POSITIONS[model] if model in BUILTIN_POSITIONS else max_positions(Path(model))


def max_positions(folder: Path) -> int | None:
    """Positions the model was made for (prompt plus completion), from config.json (under text_config for
    multimodal models); None if it does not say."""
    config = _json(folder / "config.json")
    for section in (config, config.get("text_config", {})):
        for key in POSITION_KEYS:
            if isinstance(section.get(key), int):
                return section[key]
    return None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/unk/pad as tokenizer_config.json names them (a string, or a dict with 'content')."""
    config = _json(folder / "tokenizer_config.json")
    named = {name: config[name] for name in SPECIAL_TOKENS if config.get(name) is not None}
    return {name: token["content"] if isinstance(token, dict) else token for name, token in named.items()}


def _json(path: Path) -> dict:
    """A JSON file's object; {} if the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def _bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
