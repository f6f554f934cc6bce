"""Checks of a recipe's data: ``rlkit check`` refuses data that training would stop on, or silently train
wrongly from, and says where. Local files are read row by row, without ``datasets``, and a problem is
named with the file and its line (JSON lines, CSV) or row (a JSON array, Parquet; counted from 0, as
``datasets`` and the prompt-length check count them). A ``save_to_disk`` folder is opened (memory-mapped)
for its columns, first row and row count; a dataset ``datasets.load_dataset`` reads is checked from a
local folder's first row, or a Hub dataset's copy in the local datasets cache, never over the network.
Every check sees the columns as ``data.columns`` renames them (:func:`rlkit.data.renaming`).

What is read is what ``datasets.load_dataset`` reads from these files (rlkit.data.load_file), with a
little more refused: a CSV row with fewer fields than the header (``datasets`` fills in nulls), a JSON
line that is not an object (``datasets`` makes a ``text`` column of it), and files that mix string
prompts with chat messages (``datasets`` loads them; tokenizing a batch of both fails).
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import DatasetInfo, load_dataset
from datasets.packaged_modules.cache.cache import Cache

from rlkit.data import DataSourceError, load_saved, renaming

if TYPE_CHECKING:
    from rlkit.recipe.schema import DataSource

# columns the trainer passes to every verifier besides the dataset's (rlkit.trainer.loop.rewards_for)
TRAINER_COLUMNS = ("completion_tokens",)
Row = dict  # column -> value


class DataFileError(ValueError):
    """A data problem, phrased for the user; ``reward`` is the index of the reward entry involved, ``column``
    the key of ``data.columns`` that maps a column the data lacks."""

    def __init__(self, message: str, reward: int | None = None, column: str | None = None):
        super().__init__(message)
        self.reward = reward
        self.column = column


@dataclass(frozen=True)
class SourceCheck:
    """What checking one data source found: its rows (None where they are not counted without reading
    them all) and, where its columns could not be checked, why (said to the user as a note)."""

    rows: int | None
    unchecked: str | None = None


@dataclass(frozen=True)
class Reader:
    """What one entry of ``rewards:`` reads from each row: the columns its ``when:`` routes on, and, on
    the rows it scores, the columns its verifier takes."""

    index: int
    label: str
    routes_on: tuple[str, ...]
    columns: tuple[str, ...]
    applies: Callable[[Row], bool]


def verifier_columns(fn: Callable, kwargs: dict) -> tuple[str, ...]:
    """The dataset columns a verifier ``fn(prompts, completions, ...)`` must be given: its parameters
    after the first two that have no default and are not set by the recipe's ``kwargs`` (a column read
    through ``**columns`` cannot be seen, and is not checked)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())[2:]
    except (TypeError, ValueError):  # a callable without a signature Python can read
        return ()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(
        p.name
        for p in parameters
        if p.kind in named and p.default is p.empty and p.name not in kwargs and p.name not in TRAINER_COLUMNS
    )


def check_mapping(source: str, columns: list[str], mapping: dict[str, str]) -> list[str]:
    """The columns after ``mapping``; a mapped column that the data does not have is refused."""
    for name, theirs in mapping.items():
        if theirs not in columns:
            raise DataFileError(f"{source}: no {theirs!r} column to map to {name} (columns: {columns})", column=name)
    return list(renaming(columns, mapping).values())


def check_columns(source: str, columns: list[str], readers: list[Reader]) -> None:
    """The columns of a source (or a built-in task), after the mapping, hold the prompt and everything
    the verifiers read."""
    if "prompt" not in columns:
        raise DataFileError(f"{source}: no 'prompt' column (columns: {columns}); map one with data.columns.prompt")
    for reader in readers:
        for column in reader.routes_on + reader.columns:
            if column not in columns:
                raise DataFileError(
                    f"{source}: no {column!r} column, which {_reads(reader, column)} (columns: {columns}); "
                    f"map one with data.columns.{column}",
                    reader.index,
                )


def check_source(source: DataSource, readers: list[Reader], mapping: dict[str, str]) -> SourceCheck:
    """Check one data source (``data.train`` or ``data.eval``) as its kind is read (rlkit.data.LOADERS)."""
    return SOURCE_CHECKS[source.kind](source, readers, mapping)


def _check_file(source: DataSource, readers: list[Reader], mapping: dict[str, str]) -> SourceCheck:
    return SourceCheck(rows=check_data_file(source.path, readers, mapping))


def _check_saved(source: DataSource, readers: list[Reader], mapping: dict[str, str]) -> SourceCheck:
    try:
        dataset = load_saved(source)
    except DataSourceError as e:  # a split the folder does not have
        raise DataFileError(str(e)) from None
    check_dataset(str(source), dataset.column_names, dataset[0] if len(dataset) else None, readers, mapping)
    return SourceCheck(rows=len(dataset))


def _check_hub(source: DataSource, readers: list[Reader], mapping: dict[str, str]) -> SourceCheck:
    """A local dataset folder: its first row, streamed; a Hub id: the features and split sizes of its copy
    in the local datasets cache, if there is one (no network call: the Hub may be slow or out of reach)."""
    if Path(source.path).is_dir():
        try:
            first = next(iter(load_dataset(source.path, source.name, split=source.split, streaming=True)), None)
        except (ValueError, FileNotFoundError) as e:  # a configuration, split or data files it does not have
            raise DataFileError(f"{source}: {e}") from None
        check_dataset(str(source), list(first or {}), first, readers, mapping)
        return SourceCheck(rows=None)
    info = cached_info(source)
    if info is None:
        return SourceCheck(
            rows=None,
            unchecked=f"{source} is not in the local datasets cache: its columns are checked when training loads it",
        )
    if source.split not in info.splits:
        raise DataFileError(f"{source}: the cached copy has no split {source.split!r} (splits: {list(info.splits)})")
    check_columns(str(source), check_mapping(str(source), list(info.features), mapping), readers)
    return SourceCheck(rows=info.splits[source.split].num_examples)


def cached_info(source: DataSource) -> DatasetInfo | None:
    """The features and splits of a Hub dataset's configuration in the local datasets cache, found as
    ``load_dataset`` finds it offline; None if it is not there."""
    logger = logging.getLogger(Cache.__module__)  # it warns which cached copy it found; the check says
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        info = Cache(
            repo_id=source.path,
            dataset_name=source.path.split("/")[-1],
            config_name=source.name,
            version="auto",
            hash="auto",
        ).info
    except ValueError:  # not cached, or several configurations cached and none named
        return None
    finally:
        logger.setLevel(level)
    return info if info.features is not None and info.splits is not None else None


SOURCE_CHECKS: dict[str, Callable[[DataSource, list[Reader], dict[str, str]], SourceCheck]] = {
    "file": _check_file,
    "saved": _check_saved,
    "hub": _check_hub,
}


def check_dataset(source: str, columns: list[str], first: Row | None, readers: list[Reader], mapping: dict) -> None:
    """A dataset's columns (all rows have them: Arrow is typed), mapped, and its ``first`` row's prompt."""
    if first is None:
        raise DataFileError(f"{source} is empty: no rows")
    check_columns(source, check_mapping(source, columns, mapping), readers)
    prompt_kind(_renamed(first, mapping), f"{source} row 0")


def check_data_file(path: str, readers: list[Reader], mapping: dict[str, str]) -> int:
    """Read every row of a data file and check its prompt and the verifiers' columns (as ``mapping``
    renames them); return the row count."""
    columns, rows = read_rows(path)
    if columns is not None:
        check_columns(path, check_mapping(path, columns, mapping), readers)
    count, first = 0, None  # first: (place, kind) of the first prompt
    keys: set[str] = set()  # JSON: the keys of the rows read so far, the columns datasets makes of them
    for place, row in rows:
        where = f"{path} {place}"
        keys.update(row)
        try:
            kind = _check_row(_renamed(row, mapping), where, readers, each_row_keyed=columns is None)
        except DataFileError:
            if columns is None:  # a missing key may be a mapped column no row has: say that first
                check_mapping(path, sorted(keys), mapping)
            raise
        first = first or (place, kind)
        if kind != first[1]:
            raise DataFileError(
                f"{where}: the prompt is {kind}, but {first[0]}'s is {first[1]}: the prompts of a "
                f"file are all strings or all chat messages"
            )
        count += 1
    if count == 0:
        raise DataFileError(f"{path} is empty: no rows")
    if columns is None:
        check_mapping(path, sorted(keys), mapping)
    return count


def _check_row(row: Row, where: str, readers: list[Reader], each_row_keyed: bool) -> str:
    """The kind of the row's prompt; the keys the verifiers read, where each row has its own (JSON)."""
    kind = prompt_kind(row, where)
    if each_row_keyed:
        _check_keys(row, where, readers)
    return kind


def _renamed(row: Row, mapping: dict[str, str]) -> Row:
    return {name: row[column] for column, name in renaming(list(row), mapping).items()}


def prompt_kind(row: Row, where: str) -> str:
    """'a string' or 'chat messages'; anything else, or nothing to say, is refused."""
    if "prompt" not in row:
        raise DataFileError(f"{where}: no 'prompt' key (keys: {sorted(row)})")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        kind = "a string"
    elif isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt):
        kind = "chat messages"
    else:
        raise DataFileError(
            f"{where}: the prompt should be a string or a list of chat messages "
            f"({{role, content}} each), got {_shown(prompt)}"
        )
    if not prompt:
        raise DataFileError(f"{where}: the prompt is empty")
    return kind


def _check_keys(row: Row, where: str, readers: list[Reader]) -> None:
    for reader in readers:
        missing = [c for c in reader.routes_on if c not in row]
        if not missing and reader.applies(row):
            missing = [c for c in reader.columns if c not in row]
        if missing:
            raise DataFileError(f"{where}: no {missing[0]!r} key, which {_reads(reader, missing[0])}", reader.index)


def _reads(reader: Reader, column: str) -> str:
    if column in reader.routes_on:
        return f"rewards.{reader.index}.when routes on"
    return f"the verifier of rewards.{reader.index} ({reader.label}) reads"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _shown(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value, default=repr)[:60]}"


# ---------------------------------------------------------------------------------------- reading rows


def read_rows(path: str) -> tuple[list[str] | None, Iterator[tuple[str, Row]]]:
    """The file's columns (None for JSON, where each row has its own keys) and its rows, each with its
    place (``line 3``, ``row 2``). A problem raises :class:`DataFileError` as the rows are read."""
    suffix = Path(path).suffix
    if suffix not in READERS:
        raise DataFileError(f"{path}: unsupported data file type {suffix!r}; use one of {sorted(READERS)}")
    return READERS[suffix](path)


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded as it is read (a leading byte-order mark is dropped, as
    ``datasets`` does); bytes that are not UTF-8 are refused with their offset in the file."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(
                    f"{path} line {number}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start}"
                ) from None
            offset += len(raw)


def _json(path: str) -> Iterator[tuple[str, Row]]:
    """JSON lines, one object per line (blank lines skipped), or one JSON array of objects."""
    lines = _text_lines(path)
    for number, text in lines:
        if text.lstrip().startswith("["):  # the whole file is one array
            for i, row in enumerate(_parse(text + "".join(t for _, t in lines), path, number)):
                yield f"row {i}", _object(row, f"{path} row {i}")
            return
        if text.strip():
            yield f"line {number}", _object(_parse(text.rstrip(), path, number), f"{path} line {number}")


def _parse(text: str, path: str, line: int):
    """JSON ``text`` that starts on ``line`` of ``path``."""
    try:
        return json.loads(text, object_pairs_hook=_object_once)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path} line {line + e.lineno - 1}: not valid JSON: {e.msg} (column {e.colno})") from None
    except _KeyTwice as e:
        raise DataFileError(f"{path} line {line}: key {e.args[0]!r} given twice in one object") from None


class _KeyTwice(Exception):
    pass


def _object_once(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all different (``datasets`` refuses a key given twice)."""
    row = dict(pairs)
    if len(row) < len(pairs):
        raise _KeyTwice(next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])))
    return row


def _object(row, where: str) -> Row:
    if not isinstance(row, dict):
        raise DataFileError(f"{where}: a row is a JSON object with a 'prompt' key, got {_shown(row)}")
    return row


def _csv(path: str) -> tuple[list[str], Iterator[tuple[str, Row]]]:
    """The header's columns and the rows (blank lines skipped, as pandas does)."""
    csv.field_size_limit(sys.maxsize)  # pandas, which training reads CSV with, has no limit on a field
    reader = csv.reader(text for _, text in _text_lines(path))
    header = next(reader, None)
    if header is None:
        raise DataFileError(f"{path} is empty: no header, no rows")
    return header, _csv_rows(path, reader, header)


def _csv_rows(path: str, reader, header: list[str]) -> Iterator[tuple[str, Row]]:
    """Rows as dicts; a row whose field count is not the header's is refused."""
    first = reader.line_num + 1  # the line a row starts on: a quoted field may span lines
    for fields in reader:
        if fields and len(fields) != len(header):
            spans = f" (a quoted field runs from there to line {reader.line_num})" if reader.line_num > first else ""
            raise DataFileError(
                f"{path} line {first}: {plural(len(fields), 'field')}, the header has {len(header)}{spans}"
            )
        if fields:
            # pandas reads an empty field as a null
            yield f"line {first}", {k: v if v != "" else None for k, v in zip(header, fields)}
        first = reader.line_num + 1


def _parquet(path: str) -> tuple[list[str], Iterator[tuple[str, Row]]]:
    import pyarrow.parquet as pq  # only for Parquet files

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and others for a file it cannot read
        raise DataFileError(f"{path}: not a Parquet file: {e}") from None

    def rows() -> Iterator[tuple[str, Row]]:
        index = 0
        for batch in table.iter_batches():
            for row in batch.to_pylist():
                yield f"row {index}", row
                index += 1

    return table.schema_arrow.names, rows()


# file suffix -> reader; the types rlkit.data.load_file loads
READERS = {
    ".jsonl": lambda path: (None, _json(path)),
    ".json": lambda path: (None, _json(path)),
    ".csv": _csv,
    ".parquet": _parquet,
}
