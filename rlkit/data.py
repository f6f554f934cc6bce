"""Datasets: the built-in synthetic verifiable task, and user data from local files, ``save_to_disk``
folders and anything ``datasets.load_dataset`` reads (a Hub id, a local dataset folder).

Every dataset has a ``prompt`` column (a string, or a list of chat messages that the tokenizer's chat
template turns into a string) and whatever columns its verifiers read (``answer`` for the built-ins),
under these names once ``data.columns`` has renamed the data's own.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from rlkit.builtins import BUILTIN_MULTIPLICATION

if TYPE_CHECKING:
    from rlkit.recipe.schema import DataConfig, DataSource

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataSourceError(ValueError):
    """Data that cannot be read as the recipe asks: a split a folder does not have, a mapped column it lacks."""


def renaming(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """The data's columns that are kept -> their names in rlkit, for ``data.columns`` ``mapping`` (rlkit's
    name -> the data's): mapped columns take rlkit's name; a column that already has a name mapped from
    another is dropped (the mapping says which column that is); the others keep theirs."""
    ours = {theirs: name for name, theirs in mapping.items()}
    return {c: ours.get(c, c) for c in columns if c in ours or c not in mapping}


@dataclass
class TaskData:
    train: Dataset
    eval: Dataset


def addition_task(seed: int, eval_size: int, chat: bool = False) -> TaskData:
    """Two-number addition ``"a+b="`` -> ``"a+b"``, a, b in [0, 99]: 10,000 distinct problems.

    The problems are shuffled with ``seed``; the first ``eval_size`` are held out, so evaluation
    measures generalisation to sums the model never trained on. With ``chat`` (``builtin:addition_chat``)
    each prompt is one user message, ``[{"role": "user", "content": "37+45="}]``: same problems, same split.
    """
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(pairs)
    prompts: list = [f"{a}+{b}=" for a, b in pairs]
    if chat:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    rows = {"prompt": prompts, "answer": [str(a + b) for a, b in pairs]}
    full = Dataset.from_dict(rows)
    return TaskData(train=full.select(range(eval_size, len(full))), eval=full.select(range(eval_size)))


TOOL_SHARE = 0.3  # of builtin:multiplication's hard demonstrations that call the calculator (the others answer)
EASY_FACTORS = (1, 10, 100)  # a product by one of these is a copy (37*10 -> 370): done in the head


def multiplication_pairs() -> list[tuple[int, int]]:
    """The factors of ``builtin:multiplication``, sorted: hard ones, a, b in [11, 99] (7,921), and easy
    ones, a in [10, 99] by 1, 10 or 100 in either order (539)."""
    hard = {(a, b) for a in range(11, 100) for b in range(11, 100)}
    easy = {pair for a in range(10, 100) for m in EASY_FACTORS for pair in ((a, m), (m, a))}
    return sorted(hard | easy)


def is_easy(a: int, b: int) -> bool:
    return a in EASY_FACTORS or b in EASY_FACTORS


def multiplication_task(seed: int, eval_size: int) -> TaskData:
    """Products ``"a*b="`` -> ``"a*b"`` (:func:`multiplication_pairs`) as chat messages, for the ``calculator``
    environment: the built-in tool-use task. The tiny model cannot multiply two-digit numbers in its head, so
    it gains by calling the tool; a product by 1, 10 or 100 it can copy. Each row has a ``demonstration`` for
    the warm start: an easy product is answered directly; for a ``TOOL_SHARE`` of the hard ones (chosen with
    ``seed``) the calculator call, its result and the answer, for the others the answer alone. So the
    warm-started model sometimes calls the tool and sometimes guesses, and RL decides; and the share of
    correct answers that used the tool can rise, since some answers without it are right. Split as
    :func:`addition_task`."""
    rng = random.Random(seed)
    pairs = multiplication_pairs()
    rng.shuffle(pairs)

    def demonstration(a: int, b: int) -> list[dict]:
        answer = {"role": "assistant", "content": f"Answer: {a * b}"}
        if is_easy(a, b) or rng.random() >= TOOL_SHARE:
            return [answer]
        call = {"name": "calculator", "arguments": {"expression": f"{a}*{b}"}}
        return [
            {"role": "assistant", "content": f"<tool_call>{json.dumps(call, separators=(',', ':'))}</tool_call>"},
            {"role": "tool", "content": str(a * b)},
            answer,
        ]

    rows = {
        "prompt": [[{"role": "user", "content": f"{a}*{b}="}] for a, b in pairs],
        "answer": [str(a * b) for a, b in pairs],
        "demonstration": [demonstration(a, b) for a, b in pairs],
    }
    full = Dataset.from_dict(rows)
    return TaskData(train=full.select(range(eval_size, len(full))), eval=full.select(range(eval_size)))


def load_file(source: DataSource) -> Dataset:
    """A local .jsonl/.json/.parquet/.csv file."""
    suffix = Path(source.path).suffix
    if suffix not in LOCAL_FORMATS:
        raise DataSourceError(
            f"{source.path}: unsupported data file type {suffix!r}; use one of {sorted(LOCAL_FORMATS)}"
        )
    return load_dataset(LOCAL_FORMATS[suffix], data_files=source.path, split="train")


def load_saved(source: DataSource) -> Dataset:
    """A folder written by ``save_to_disk``: a Dataset, or the ``split`` of a DatasetDict (memory-mapped,
    so opening one reads no rows)."""
    saved = load_from_disk(source.path)
    if isinstance(saved, Dataset):
        if source.split is not None:
            raise DataSourceError(
                f"{source.path} holds one Dataset, which has no splits: remove split {source.split!r}"
            )
        return saved
    assert isinstance(saved, DatasetDict)
    splits = list(saved)
    if source.split is None:
        raise DataSourceError(
            f"{source.path} is a DatasetDict with the splits {splits}: choose one, e.g. "
            f"{{path: {source.path}, split: {splits[0]}}}"
        )
    if source.split not in saved:
        raise DataSourceError(f"{source.path} has no split {source.split!r} (splits: {splits})")
    return saved[source.split]


def load_hub(source: DataSource) -> Dataset:
    """``datasets.load_dataset(path, name, split=split)``: a Hub id (from the local cache with
    HF_DATASETS_OFFLINE=1), or a local dataset folder."""
    return load_dataset(source.path, source.name, split=source.split)


LOADERS: dict[str, Callable[[DataSource], Dataset]] = {"file": load_file, "saved": load_saved, "hub": load_hub}


def load_source(source: DataSource, columns: dict[str, str]) -> Dataset:
    """One split of data, its columns renamed by ``columns`` (``data.columns``: rlkit's name -> the data's)."""
    dataset = LOADERS[source.kind](source)
    missing = {name: theirs for name, theirs in columns.items() if theirs not in dataset.column_names}
    if missing:
        name, theirs = next(iter(missing.items()))
        raise DataSourceError(
            f"data.columns.{name}: {source}: no {theirs!r} column to map to {name} (columns: {dataset.column_names})"
        )
    kept = renaming(dataset.column_names, columns)
    return dataset.select_columns(list(kept)).rename_columns({c: name for c, name in kept.items() if c != name})


def load_task(data: DataConfig, seed: int) -> TaskData:
    """The built-in ``data.task``, or ``data.train``/``data.eval`` (eval defaults to a held-out slice of train)."""
    if data.task == BUILTIN_MULTIPLICATION:
        return multiplication_task(seed, data.eval_size)
    if data.task is not None:
        return addition_task(seed, data.eval_size, chat=data.task == "builtin:addition_chat")
    assert data.train is not None  # the schema gives one of task and train
    train_set = load_source(data.train, data.columns)
    if "prompt" not in train_set.column_names:
        raise DataSourceError(f"{data.train}: no 'prompt' column (columns: {train_set.column_names})")
    if data.eval is not None:
        return TaskData(train=train_set, eval=load_source(data.eval, data.columns))
    split = train_set.train_test_split(test_size=min(data.eval_size, len(train_set) // 5), seed=seed)
    return TaskData(train=split["train"], eval=split["test"])


def render_prompt(prompt, tokenizer, tools: list[dict] | None = None) -> str:
    """A prompt as text, for verifiers and logs: chat messages go through the chat template (with the
    JSON schemas of the ``tools`` offered, if any)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)


def tokenize_prompts(prompts: list, tokenizer, tools: list[dict] | None = None) -> list[list[int]]:
    """Token ids of each prompt (all strings, or all chat messages), as TRL's GRPOTrainer makes them, and
    its SFTTrainer for the warm start, so RL sees the tokens SFT trained on: a string with the tokenizer's
    special tokens (its BOS, where it adds one), messages through the chat template with the generation
    prompt (the template writes the BOS itself; nothing is added to it).
    """
    if isinstance(prompts[0], str):
        if tools:
            raise ValueError("tools are offered through the chat template: the prompts must be chat messages")
        return tokenizer(prompts).input_ids
    return tokenizer.apply_chat_template(
        prompts, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    ).input_ids


class PromptTooLong(ValueError):
    """A prompt is over ``rollout.max_prompt_tokens`` with ``rollout.prompt_overflow: error``, or the prompt and
    ``rollout.max_new_tokens`` are more positions than the model has."""


def prompt_lengths(
    data: TaskData, tokenizer, tools: list[dict] | None = None, batch_size: int = 1024
) -> dict[str, list[int]]:
    """Tokens of every prompt of each split, ``{"train": [...], "eval": [...]}``, counted as
    :func:`tokenize_prompts` makes them (with the ``tools`` offered)."""
    return {
        split: [
            len(ids)
            for start in range(0, len(dataset), batch_size)
            for ids in tokenize_prompts(dataset[start : start + batch_size]["prompt"], tokenizer, tools)
        ]
        for split, dataset in (("train", data.train), ("eval", data.eval))
    }


def check_prompt_lengths(lengths: dict[str, list[int]], limit: int) -> None:
    """Raise :class:`PromptTooLong` naming the first row of either split whose prompt is over ``limit``
    tokens (``lengths``: :func:`prompt_lengths`)."""
    for split, counts in lengths.items():
        over = [i for i, n in enumerate(counts) if n > limit]
        if over:
            raise PromptTooLong(
                f"{split} data, row {over[0]}: the prompt is {counts[over[0]]} tokens, over "
                f"rollout.max_prompt_tokens={limit} ({len(over)} of {len(counts)} {split} prompts are over); "
                f"raise the limit, shorten the prompts, or set rollout.prompt_overflow: truncate_left"
            )


def check_room(
    lengths: dict[str, list[int]],
    max_prompt_tokens: int,
    max_new_tokens: int,
    positions: int | None,
    model: str,
    key: str = "rollout.max_new_tokens",
) -> None:
    """Raise :class:`PromptTooLong` naming the first row whose prompt (cut to ``max_prompt_tokens``, as the
    rollout worker cuts it) and ``max_new_tokens`` (the recipe's ``key``) do not fit in the ``positions`` of
    ``model`` (a recipe key): past them a model with learned positions fails and one with rotary positions
    extrapolates."""
    if positions is None:
        return
    for split, counts in lengths.items():
        over = [i for i, n in enumerate(counts) if min(n, max_prompt_tokens) + max_new_tokens > positions]
        if over:
            n = min(counts[over[0]], max_prompt_tokens)
            raise PromptTooLong(
                f"{split} data, row {over[0]}: the prompt's {n} tokens and {key}={max_new_tokens} "
                f"are {n + max_new_tokens} positions, over the {positions} of {model} (max_position_embeddings; "
                f"{len(over)} of {len(counts)} {split} prompts are over); lower {key} or "
                f"rollout.max_prompt_tokens"
            )
