"""Data sources and the column mapping: a local file, a ``save_to_disk`` folder (a Dataset, or a split of a
DatasetDict) and ``datasets.load_dataset`` (a local dataset folder, one of its configurations, a Hub id read
from the local datasets cache) load the rows they hold under rlkit's column names; ``rlkit check`` refuses a
mapped column the data lacks, and a verifier column still missing after the mapping, before any model loads.
Nothing is downloaded: a Hub id is tested on a copy placed in the datasets cache, offline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, load_dataset

from rlkit.cli import main
from rlkit.data import DataSourceError, load_source, load_task, renaming
from rlkit.recipe.schema import DataConfig, DataSource

ROOT = Path(__file__).parents[1]
# the data's own names: the prompt is 'question', the answer exact_number reads is 'solution'
ROWS = [{"question": f"{i}+1=", "solution": str(i + 1), "level": i % 3} for i in range(10)]
MAPPING = {"prompt": "question", "answer": "solution"}


def ours(rows: list[dict]) -> list[dict]:
    """``rows`` under rlkit's names, as MAPPING renames them (worked out here, not by rlkit)."""
    return [{"prompt": r["question"], "answer": r["solution"], "level": r["level"]} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "question,solution,level\n" + "".join(f"{r['question']},{r['solution']},{r['level']}\n" for r in rows)
    )
    return path


def saved_dataset(path: Path, rows: list[dict]) -> Path:
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def saved_dataset_dict(path: Path) -> Path:
    DatasetDict({"train": Dataset.from_list(ROWS[:8]), "test": Dataset.from_list(ROWS[8:])}).save_to_disk(str(path))
    return path


def dataset_folder(path: Path) -> Path:
    """A folder ``load_dataset`` reads: its splits from the file names."""
    write_jsonl(path / "train.jsonl", ROWS[:8])
    write_jsonl(path / "test.jsonl", ROWS[8:])
    return path


def configured_folder(path: Path) -> Path:
    """A folder laid out as a Hub dataset with two configurations (as openai/gsm8k's main and socratic),
    declared in its README; 'socratic' holds other questions."""
    socratic = [{**row, "question": f"Think: {row['question']}"} for row in ROWS]
    write_jsonl(path / "main" / "train.jsonl", ROWS[:8])
    write_jsonl(path / "main" / "test.jsonl", ROWS[8:])
    write_jsonl(path / "socratic" / "train.jsonl", socratic)
    (path / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: main\n  data_files:\n  - {split: train, path: main/train.jsonl}\n"
        "  - {split: test, path: main/test.jsonl}\n"
        "- config_name: socratic\n  data_files:\n  - {split: train, path: socratic/train.jsonl}\n---\n"
    )
    return path


# name -> (write the source under tmp_path, the recipe's source without the path, the rows it holds)
SOURCES = {
    "jsonl file": (lambda tmp: write_jsonl(tmp / "d.jsonl", ROWS), {}, ROWS),
    "parquet file": (lambda tmp: write_parquet(tmp / "d.parquet", ROWS), {}, ROWS),
    "csv file": (  # pandas reads the numbers in a CSV as numbers
        lambda tmp: write_csv(tmp / "d.csv", ROWS),
        {},
        [{**row, "solution": int(row["solution"])} for row in ROWS],
    ),
    "save_to_disk Dataset": (lambda tmp: saved_dataset(tmp / "saved", ROWS), {}, ROWS),
    "save_to_disk DatasetDict, a split": (lambda tmp: saved_dataset_dict(tmp / "saved"), {"split": "train"}, ROWS[:8]),
    "load_dataset folder": (lambda tmp: dataset_folder(tmp / "folder"), {"split": "train"}, ROWS[:8]),
    "load_dataset folder, a configuration": (
        lambda tmp: configured_folder(tmp / "hub"),
        {"name": "socratic", "split": "train"},
        [{**row, "question": f"Think: {row['question']}"} for row in ROWS],
    ),
}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """A datasets cache of the test's own, so that no test reads what another left; offline, as nothing may
    be downloaded here."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("write, where, rows", SOURCES.values(), ids=SOURCES)
def test_each_source_loads_its_rows_under_rlkits_names(write, where, rows, tmp_path):
    source = DataSource(path=str(write(tmp_path)), **where)
    assert load_source(source, MAPPING).to_list() == ours(rows)


def test_without_a_mapping_the_datas_own_names_stay(tmp_path):
    source = DataSource(path=str(saved_dataset(tmp_path / "saved", ROWS)))
    assert load_source(source, {}).to_list() == ROWS


def test_a_mapped_column_replaces_one_already_named_so(tmp_path):
    """'answer' maps to 'solution': the data's own 'answer' column is dropped, not kept beside it."""
    rows = [{"prompt": "1+1=", "answer": "wrong", "solution": "2"}]
    source = DataSource(path=str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert load_source(source, {"answer": "solution"}).to_list() == [{"prompt": "1+1=", "answer": "2"}]
    assert renaming(["prompt", "answer", "solution"], {"answer": "solution"}) == {
        "prompt": "prompt",
        "solution": "answer",
    }
    assert renaming(["a", "b"], {"a": "b", "b": "a"}) == {"a": "b", "b": "a"}  # a swap keeps both


def test_train_and_eval_are_both_mapped(tmp_path):
    folder = saved_dataset_dict(tmp_path / "saved")
    data = DataConfig(
        task=None,
        train={"path": str(folder), "split": "train"},
        eval={"path": str(folder), "split": "test"},
        columns=MAPPING,
    )
    task = load_task(data, seed=0)
    assert (task.train.to_list(), task.eval.to_list()) == (ours(ROWS[:8]), ours(ROWS[8:]))


def test_without_eval_data_a_slice_of_train_is_held_out(tmp_path):
    """At most a fifth of the train data, min(eval_size, rows // 5): 2 of 10 rows; together they are all."""
    data = DataConfig(task=None, train=str(write_jsonl(tmp_path / "d.jsonl", ROWS)), columns=MAPPING, eval_size=3)
    task = load_task(data, seed=0)
    assert (len(task.train), len(task.eval)) == (8, 2)
    assert sorted(task.eval.to_list() + task.train.to_list(), key=lambda r: int(r["answer"])) == ours(ROWS)


@pytest.mark.parametrize(
    "split, message",
    [
        (None, "is a DatasetDict with the splits ['train', 'test']: choose one, e.g. {path: "),
        ("validation", "has no split 'validation' (splits: ['train', 'test'])"),
    ],
)
def test_a_dataset_dict_needs_a_split_it_has(split, message, tmp_path, monkeypatch, capsys):
    folder = saved_dataset_dict(tmp_path / "saved")
    with pytest.raises(DataSourceError, match=re.escape(message)):
        load_source(DataSource(path=str(folder), split=split), {})
    monkeypatch.chdir(tmp_path)
    source = "saved" if split is None else f"{{path: saved, split: {split}}}"
    recipe(tmp_path, f"  train: {source}\n")
    code, err = check(capsys)
    assert code == 2
    assert err.startswith("error: r.yaml:4: data.train: saved") and message in err, err


def check(capsys) -> tuple[int, str]:
    """``rlkit check r.yaml``: its exit code and what it wrote to stderr (not what writing the data did)."""
    capsys.readouterr()
    code = main(["check", "r.yaml"])
    return code, capsys.readouterr().err


def recipe(tmp_path: Path, data: str, rewards: str = "") -> Path:
    """r.yaml: the built-in model on ``data`` (lines under ``data:``, from line 4), eval_size 2."""
    path = tmp_path / "r.yaml"
    path.write_text("output_dir: out\ndata:\n  task: null\n" + data + "  eval_size: 2\n" + rewards)
    return path


@pytest.mark.parametrize("write, where, rows", SOURCES.values(), ids=SOURCES)
def test_check_passes_each_source_with_its_mapping(write, where, rows, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = {"path": write(tmp_path).name, **where}
    recipe(tmp_path, f"  train: {json.dumps(source)}\n  columns: {json.dumps(MAPPING)}\n")
    assert check(capsys) == (0, "")  # every one of these is checked: no note


@pytest.mark.parametrize("write, where, rows", SOURCES.values(), ids=SOURCES)
def test_check_refuses_a_mapped_column_the_data_lacks(write, where, rows, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = {"path": write(tmp_path).name, **where}
    recipe(tmp_path, f"  train: {json.dumps(source)}\n  columns:\n    prompt: question\n    answer: solutions\n")
    code, err = check(capsys)
    assert code == 2
    shown = str(DataSource(**source))
    assert err == (
        f"error: r.yaml:7: data.columns.answer: data.train: {shown}: no 'solutions' column to map to answer "
        "(columns: ['level', 'question', 'solution'])\n"
        if source["path"].endswith(".jsonl")  # JSON lines: the keys of the rows, sorted
        else f"error: r.yaml:7: data.columns.answer: data.train: {shown}: no 'solutions' column to map to "
        "answer (columns: ['question', 'solution', 'level'])\n"
    )


@pytest.mark.parametrize("write, where, rows", SOURCES.values(), ids=SOURCES)
def test_check_refuses_a_verifier_column_missing_after_the_mapping(write, where, rows, tmp_path, monkeypatch, capsys):
    """Only the prompt is mapped: exact_number reads 'answer', which the data calls 'solution'."""
    monkeypatch.chdir(tmp_path)
    source = {"path": write(tmp_path).name, **where}
    recipe(tmp_path, f"  train: {json.dumps(source)}\n  columns: {{prompt: question}}\n")
    code, err = check(capsys)
    assert code == 2
    assert err.startswith(f"error: r.yaml:4: data.train: {DataSource(**source)}")
    if source["path"].endswith(".jsonl"):  # each JSON line has its own keys: the first line is named
        assert "line 1: no 'answer' key, which the verifier of rewards.0 (exact_number) reads" in err, err
    else:
        assert (
            "no 'answer' column, which the verifier of rewards.0 (exact_number) reads "
            "(columns: ['prompt', 'solution', 'level']); map one with data.columns.answer" in err
        ), err


def test_check_refuses_a_mapped_column_no_json_line_has(tmp_path, monkeypatch, capsys):
    """JSON lines: a mapped column missing from the first line is named as the mapping's, not as a key the
    verifier lacks (routed rows may lack a column; one that no line read so far has is a wrong mapping)."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    recipe(tmp_path, "  train: d.jsonl\n  columns: {prompt: prompt_text, answer: solution}\n")
    assert check(capsys) == (
        2,
        "error: r.yaml:5: data.columns.prompt: data.train: d.jsonl: no 'prompt_text' column to map to prompt "
        "(columns: ['level', 'question', 'solution'])\n",
    )


@pytest.mark.parametrize(
    "data, where, message",
    [
        ("  train: {path: d.jsonl, pat: x}\n", "r.yaml:4", "data.train.pat: unknown key; did you mean 'path'?"),
        ("  train: some/dataset\n", "r.yaml:4", "some/dataset is not a local file or save_to_disk folder, so "),
        ("  train: {path: d.jsonl, split: train}\n", "r.yaml:4", "d.jsonl is a data file, one split: name and split"),
        ("  train: {path: saved, name: main}\n", "r.yaml:4", "saved is a save_to_disk folder, which has no config"),
        ("  train: missing.jsonl\n", "r.yaml:4", "data file 'missing.jsonl' does not exist"),
        ("  train: {path: saved, split: train}\n", "r.yaml:4", "saved holds one Dataset, which has no splits: remove"),
        (
            "  train: {path: hub, name: nope, split: train}\n",
            "r.yaml:4",
            "data.train: hub (name nope, split train): BuilderConfig 'nope' not found. Available: ['main', 'socratic']",
        ),
        ("  train: {path: empty, split: train}\n", "r.yaml:4", "data.train: empty (split train): The directory at "),
        (
            "  train: {path: hub, name: main, split: validation}\n",
            "r.yaml:4",
            "data.train: hub (name main, split validation): Bad split: validation. Available splits: ['train', 'test']",
        ),
        (
            "  train: d.jsonl\n  columns: {prompt: question, answer: question}\n",
            "r.yaml:5",
            "data.columns: Value error, prompt and answer both map to the data's 'question'",
        ),
    ],
)
def test_bad_source_keys_are_refused_with_their_key_path(data, where, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    saved_dataset(tmp_path / "saved", ROWS)
    configured_folder(tmp_path / "hub")
    (tmp_path / "empty").mkdir()
    recipe(tmp_path, data)
    code, err = check(capsys)
    assert code == 2
    assert err.startswith(f"error: {where}") and message in err, err


def test_a_recipe_on_a_saved_folder_with_a_mapping_trains(tmp_path):
    folder = saved_dataset(tmp_path / "saved", ROWS * 2)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "recipes" / "quickstart.yaml"),
            f"output_dir={out}",
            "data.task=null",
            f"data.train={folder}",
            "data.columns={prompt: question, answer: solution}",
            "data.eval_size=4",
            "model.warm_start=null",
            "log.trackers=[]",
            "log.every=1",
            "log.samples=2",
            "trainer.steps=2",
            "trainer.prompts_per_step=2",
            "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=3",
        ]
    )
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}
    assert {s["prompt"] for s in samples} <= {row["question"] for row in ROWS}  # the mapped prompts were sampled


# ------------------------------------------------------------------------------------ a Hub id, offline

OFFLINE_CHECK = """
import contextlib, io, json, sys
from rlkit.cli import main
from rlkit.data import load_source
from rlkit.recipe.schema import DataSource
source = DataSource(path="gsm8k_like", name="main", split="test")
print(json.dumps(load_source(source, {"prompt": "question", "answer": "solution"}).to_list()))
for recipe in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", recipe])
    print(json.dumps([code, err.getvalue()]))
"""


def test_a_hub_id_loads_and_is_checked_from_the_datasets_cache(tmp_path, datasets_cache):
    """A Hub id that is not a local folder goes through load_dataset, which reads it from the datasets cache
    offline; check reads its features and split sizes there. The cached copy is made from a local folder
    named like the id (load_dataset caches both alike), then read from a folder without it."""
    load_dataset(str(configured_folder(tmp_path / "gsm8k_like")), "main", split="test", cache_dir=str(datasets_cache))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cases = {  # recipe -> (exit code, what check says)
        "mapped.yaml": (
            "  train: {path: gsm8k_like, name: main, split: test}\n  columns: {prompt: question, answer: x}\n",
            2,
            "error: mapped.yaml:5: data.columns.answer: data.train: gsm8k_like (name main, split test): no 'x' "
            "column to map to answer (columns: ['question', 'solution', 'level'])\n",
        ),
        "split.yaml": (
            "  train: {path: gsm8k_like, name: main, split: validation}\n",
            2,
            "error: split.yaml:4: data.train: gsm8k_like (name main, split validation): the cached copy has no "
            "split 'validation' (splits: ['train', 'test'])\n",
        ),
        "counted.yaml": (  # the test split's 2 rows, from the cache: too few to hold a fifth out
            "  train: {path: gsm8k_like, name: main, split: test}\n  columns: {prompt: question, answer: solution}\n",
            2,
            "error: counted.yaml:4: data.train: gsm8k_like (name main, split test) has 2 rows: the slice held out ",
        ),
        "uncached.yaml": (
            "  train: {path: someone/uncached, split: train}\n",
            0,
            "note: uncached.yaml:4: data.train: someone/uncached (split train) is not in the local datasets "
            "cache: its columns are checked when training loads it\n",
        ),
    }
    for name, (data, _, _) in cases.items():
        recipe(elsewhere, data).rename(elsewhere / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(datasets_cache)}
    run = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHECK, *cases], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows, *checks = [json.loads(line) for line in run.stdout.splitlines()]
    assert rows == ours(ROWS[8:])
    for (name, (_, code, said)), (exit_code, err) in zip(cases.items(), checks, strict=True):
        assert exit_code == code and err.startswith(said), (name, err)
