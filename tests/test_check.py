"""`rlkit check` on malformed recipes: each exits 2 with one line naming the file and line (or the
override) and the problem, without loading a model."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from rlkit.cli import main
from rlkit.recipe.data_check import READERS
from rlkit.recipe.model_check import check_model_folder, same_tokenizer

OK = "output_dir: out\n"


def model_folder(
    vocab_size: int,
    tokens: int,
    files=("config.json", "tokenizer.json"),
    positions: int | None = None,
    **tokenizer_config,
):
    """A writer of a model folder without weights: config.json with ``vocab_size`` (and
    max_position_embeddings ``positions``), a word-level tokenizer.json with ids 0..tokens-1 and, given
    keys, a tokenizer_config.json."""

    def write(path: Path) -> Path:
        path.mkdir()
        if "config.json" in files:
            config = {"model_type": "llama", "vocab_size": vocab_size}
            if positions is not None:
                config["max_position_embeddings"] = positions
            (path / "config.json").write_text(json.dumps(config))
        if "tokenizer.json" in files:
            vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, tokens)}}
            Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(path / "tokenizer.json"))
        if tokenizer_config:
            (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        return path

    return write


def jsonl(n: int, **changes) -> str:
    """``n`` addition rows as JSON lines; ``changes`` maps a line number (``line3``) to the text of that line."""
    lines = [json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(n)]
    for key, text in changes.items():
        lines[int(key[4:]) - 1] = text
    return "".join(line + "\n" for line in lines)


def csv_rows(n: int, header: str = "prompt,answer", **changes) -> str:
    """A header and ``n`` addition rows as CSV; ``changes`` as in :func:`jsonl` (line 1 is the header)."""
    lines = [header] + [f"{i}+1=,{i + 1}" for i in range(n)]
    for key, text in changes.items():
        lines[int(key[4:]) - 1] = text
    return "".join(line + "\n" for line in lines)


def parquet(columns: dict):
    """A writer of a Parquet file with these columns."""

    def write(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)

    return write


DATA = OK + "data: {task: null, train: t.jsonl, eval_size: 2}\n"  # data.train on line 2
CSV = OK + "data: {task: null, train: t.csv, eval_size: 2}\n"
PARQUET = OK + "data: {task: null, train: t.parquet, eval_size: 2}\n"
TEACHER = OK + "teacher: {path: builtin:tiny-teacher}\n"

# id: (files written in the working directory, overrides of r.yaml, where, message fragment)
CASES = {
    "unknown top-level key": (
        {"r.yaml": OK + "trainr: {steps: 3}\n"},
        [],
        "r.yaml:2",
        "trainr: unknown key; did you mean 'trainer'?",
    ),
    "unknown section key": (
        {"r.yaml": OK + "trainer:\n  steps: 3\n  lrr: 0.1\n"},
        [],
        "r.yaml:4",
        "trainer.lrr: unknown key; did you mean 'lr'?",
    ),
    "unknown nested key": (
        {"r.yaml": OK + "model:\n  warm_start:\n    max_stepz: 3\n"},
        [],
        "r.yaml:4",
        "model.warm_start.max_stepz: unknown key; did you mean 'max_steps'?",
    ),
    "unknown reward key": (
        {"r.yaml": OK + "rewards:\n  - verifier: math\n    wieght: 2\n"},
        [],
        "r.yaml:4",
        "rewards.0.wieght: unknown key; did you mean 'weight'?",
    ),
    "wrong type": (
        {"r.yaml": OK + "rollout:\n  samples_per_prompt: many\n"},
        [],
        "r.yaml:3",
        "rollout.samples_per_prompt: Input should be a valid integer",
    ),
    "section not a mapping": (
        {"r.yaml": OK + "trainer: 5\n"},
        [],
        "r.yaml:2",
        "trainer: Input should be a valid dictionary",
    ),
    "bad objective option": (
        {"r.yaml": OK + "objective:\n  preset: grpo\n  surrogate: {eps_hihg: 0.3}\n"},
        [],
        "r.yaml:4",
        "objective.surrogate.eps_hihg: unknown key; did you mean 'eps_high'?",
    ),
    "bad objective part": (
        {"r.yaml": OK + "objective:\n  aggregation: {type: tokn_mean}\n"},
        [],
        "r.yaml:3",
        "objective.aggregation: unknown aggregation part 'tokn_mean'",
    ),
    "unknown preset": (
        {"r.yaml": OK + "objective: {preset: grpoo}\n"},
        [],
        "r.yaml:2",
        "objective: unknown objective preset 'grpoo'",
    ),
    "unknown verifier": (
        {"r.yaml": OK + "rewards:\n  - {verifier: math}\n  - verifier: exact_numbr\n"},
        [],
        "r.yaml:4",
        "rewards.1.verifier: unknown verifier 'exact_numbr'; did you mean 'exact_number'?",
    ),
    "unknown verifier, no close name": (
        {"r.yaml": OK + "rewards: [{verifier: zzz}]\n"},
        [],
        "r.yaml:2",
        "unknown verifier 'zzz'; registered: ['code', 'exact_number'",
    ),
    "verifier module missing": (
        {"r.yaml": OK + "rewards: [{verifier: 'mypkg.scores:f'}]\n"},
        [],
        "r.yaml:2",
        "rewards.0.verifier: cannot import 'mypkg.scores': ModuleNotFoundError: No module named 'mypkg'",
    ),
    "verifier attribute missing": (
        {"r.yaml": OK + "rewards: [{verifier: 'rewards.exact:nope'}]\n"},
        [],
        "r.yaml:2",
        "'rewards.exact' has no attribute 'nope'",
    ),
    "verifier not callable": (
        {"r.yaml": OK + "rewards: [{verifier: 'rewards.exact:_NUMBER'}]\n"},
        [],
        "r.yaml:2",
        "verifier 'rewards.exact:_NUMBER' is not callable",
    ),
    "verifier file missing": (
        {"r.yaml": OK + "rewards: [{verifier: 'mine.py:score'}]\n"},
        [],
        "r.yaml:2",
        "verifier file 'mine.py' does not exist",
    ),
    "verifier file raises": (
        {"r.yaml": OK + "rewards: [{verifier: 'mine.py:score'}]\n", "mine.py": "1 / 0\n"},
        [],
        "r.yaml:2",
        "cannot import 'mine.py': ZeroDivisionError: division by zero",
    ),
    "base cycle": (
        {"r.yaml": OK + "base: b.yaml\n", "b.yaml": "trainer: {steps: 3}\nbase: r.yaml\n"},
        [],
        "b.yaml:2",
        "base: base recipes form a cycle: r.yaml -> b.yaml -> r.yaml",
    ),
    "own base": ({"r.yaml": "base: r.yaml\n" + OK}, [], "r.yaml:1", "base recipes form a cycle: r.yaml -> r.yaml"),
    "missing base": (
        {"r.yaml": OK + "base: b.yaml\n", "b.yaml": "base: sub/c.yaml\n"},
        [],
        "b.yaml:1",
        "base: base recipe 'sub/c.yaml' not found",
    ),
    "base not a path": ({"r.yaml": OK + "base: [b.yaml]\n"}, [], "r.yaml:2", "base: should be a recipe file path"),
    "invalid YAML": (
        {"r.yaml": OK + "trainer:\n  steps: 3\n   lr: 1\n"},
        [],
        "r.yaml:4",
        "not valid YAML: mapping values are not allowed here (column 6)",
    ),
    "unclosed YAML": ({"r.yaml": OK + "trainer: {steps: 3\n"}, [], "r.yaml:3", "not valid YAML: while parsing"),
    "not a text file": ({"r.yaml": b"\xff\xfe\x00"}, [], "r.yaml", "not a text file"),
    "duplicate key": (
        {"r.yaml": OK + "trainer:\n  steps: 3\n  lr: 0.1\n  steps: 4\n"},
        [],
        "r.yaml:5",
        "trainer.steps: duplicate key (also on line 3)",
    ),
    "duplicate reward label": (
        {"r.yaml": OK + "rewards:\n  - {verifier: math, name: m}\n  - {verifier: math, name: m}\n"},
        [],
        "r.yaml:4",
        "rewards.1: same label 'm' as rewards.0; set 'name'",
    ),
    "non-mapping YAML": ({"r.yaml": "- a\n- b\n"}, [], "r.yaml", "a recipe is a mapping of sections, got list"),
    "missing output_dir": ({"r.yaml": "trainer: {steps: 3}\n"}, [], "r.yaml", "output_dir: required key is missing"),
    "data task and train": (
        {"r.yaml": OK + "data: {task: 'builtin:addition', train: t.jsonl}\n", "t.jsonl": ""},
        [],
        "r.yaml:2",
        "give exactly one of data.task (built-in) and data.train (a file)",
    ),
    "model/tokenizer mismatch": (
        {"r.yaml": OK + "model: {path: m}\n", "m": model_folder(10, 12)},
        [],
        "r.yaml:2",
        "model.path: the tokenizer of m has token 'w11' with id 11, "
        "but config.json's vocab_size is 10: the model has no embedding",
    ),
    "model folder without config": (
        {"r.yaml": OK + "model:\n  path: m\n", "m": model_folder(10, 10, files=["tokenizer.json"])},
        [],
        "r.yaml:3",
        "model.path: m has no config.json",
    ),
    "model folder without tokenizer": (
        {"r.yaml": OK + "model: {path: m}\n", "m": model_folder(10, 10, files=["config.json"])},
        [],
        "r.yaml:2",
        "model.path: m has no tokenizer (none of tokenizer.json, ",
    ),
    "model path is a file": ({"r.yaml": OK + "model: {path: r.yaml}\n"}, [], "r.yaml:2", "r.yaml is not a folder"),
    "model path missing": (
        {"r.yaml": OK + "model: {path: nowhere}\n"},
        [],
        "r.yaml:2",
        "model.path: Value error, model folder 'nowhere' does not exist",
    ),
    "teacher tokenizer differs": (
        {
            "r.yaml": OK + "model: {path: a}\nteacher: {path: b}\nobjective: {preset: opd}\n",
            "a": model_folder(10, 10),
            "b": model_folder(10, 8),
        },
        [],
        "r.yaml:3",
        "teacher.path: the teacher's tokenizer differs from the model's: token 'w8' has id 8 in a and None in b",
    ),
    "built-in teacher of another tokenizer": (
        {"r.yaml": OK + "teacher: {path: builtin:tiny-bpe}\n"},
        [],
        "r.yaml:2",
        "teacher.path: builtin:tiny-bpe does not share the tokenizer of model.path builtin:tiny",
    ),
    "distillation without a teacher": (
        {"r.yaml": OK + "objective: {preset: opd_tip}\n"},
        [],
        "r.yaml:2",
        "objective: it distills from a teacher; add a teacher: section",
    ),
    "LoRA option under another name": (
        {"r.yaml": OK + "model:\n  lora: {r: 8, alpha: 16}\n"},
        [],
        "r.yaml:3",
        "model.lora.alpha: unknown key; did you mean 'lora_alpha'?",
    ),
    "LoRA rank 0": (
        {"r.yaml": OK + "model:\n  lora:\n    r: 0\n"},
        [],
        "r.yaml:4",
        "model.lora.r: Input should be greater than 0",
    ),
    "LoRA targets neither names nor all-linear": (
        {"r.yaml": OK + "model:\n  lora: {target_modules: all}\n"},
        [],
        "r.yaml:3",
        "model.lora.target_modules: Value error, a list of module names, or 'all-linear'; got 'all'",
    ),
    "override of unknown key": (
        {"r.yaml": OK},
        ["trainer.lrr=1"],
        "override 'trainer.lrr=1'",
        "trainer.lrr: unknown key; did you mean 'lr'?",
    ),
    "override without =": (
        {"r.yaml": OK},
        ["trainer.steps"],
        "override 'trainer.steps'",
        "is not of the form key.path=value",
    ),
    "override without key": (
        {"r.yaml": OK},
        ["trainer..steps=3"],
        "override 'trainer..steps=3'",
        "is not of the form key.path=value",
    ),
    "override value not YAML": (
        {"r.yaml": OK},
        ["trainer.steps=[3"],
        "override 'trainer.steps=[3'",
        "the value is not valid YAML: ",
    ),
    "override below a value": (
        {"r.yaml": OK},
        ["output_dir.x=1"],
        "override output_dir.x",
        "'output_dir' is not a section",
    ),
    "override of the preset": (
        {"r.yaml": OK},
        ["objective.preset=grpoo"],
        "override 'objective.preset=grpoo'",
        "objective: unknown objective preset 'grpoo'",
    ),
    "override breaking a rule of its section": (
        {"r.yaml": OK + "trainer: {prompts_per_step: 8}\n"},
        ["trainer.mini_batches=3"],
        "override 'trainer.mini_batches=3'",
        "trainer: Value error, prompts_per_step (8) must be divisible by mini_batches (3)",
    ),
    "override of a key that starts like the bad one": (
        {"r.yaml": OK + "trainer:\n  lr_schedule: cosin\n"},
        ["trainer.lr=0.1"],
        "r.yaml:3",
        "trainer.lr_schedule: Input should be 'constant', 'linear' or 'cosine'",
    ),
    # ---- data files: the file and its line or row are named after the recipe key that names the file
    "no prompt key": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line1='{"question": "1+1=", "answer": "2"}')},
        [],
        "r.yaml:2",
        "data.train: t.jsonl line 1: no 'prompt' key (keys: ['answer', 'question'])",
    ),
    "no prompt column": (
        {"r.yaml": CSV, "t.csv": csv_rows(10, header="question,answer")},
        [],
        "r.yaml:2",
        "data.train: t.csv: no 'prompt' column (columns: ['question', 'answer'])",
    ),
    "no prompt column, Parquet": (
        {"r.yaml": PARQUET, "t.parquet": parquet({"question": ["1+1="], "answer": ["2"]})},
        [],
        "r.yaml:2",
        "data.train: t.parquet: no 'prompt' column",
    ),
    "no column the verifier reads": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line3='{"prompt": "2+1="}')},
        [],
        "r.yaml:2",
        "data.train: t.jsonl line 3: no 'answer' key, which the verifier of rewards.0 (exact_number) reads",
    ),
    "no column the verifier reads, CSV": (
        {"r.yaml": CSV + "rewards: [{verifier: code}]\n", "t.csv": csv_rows(10)},
        [],
        "r.yaml:2",
        "data.train: t.csv: no 'tests' column, which the verifier "
        "of rewards.0 (code) reads (columns: ['prompt', 'answer'])",
    ),
    "no column the verifier reads, built-in task": (
        {"r.yaml": OK},
        ["rewards=[{verifier: code}]"],
        "override 'rewards=[{verifier: code}]'",
        "data.task: builtin:addition: no 'tests' column, which the verifier of rewards.0 (code) reads",
    ),
    "no column the routing reads": (
        {"r.yaml": DATA + "rewards: [{verifier: math, when: {task: math}}]\n", "t.jsonl": jsonl(10)},
        [],
        "r.yaml:2",
        "data.train: t.jsonl line 1: no 'task' key, which rewards.0.when routes on",
    ),
    "unsupported file type": (
        {"r.yaml": OK + "data: {task: null, train: t.txt}\n", "t.txt": "1+1=\n"},
        [],
        "r.yaml:2",
        "data.train: t.txt: unsupported data file type '.txt'; use one of ['.csv', '.json', '.jsonl', '.parquet']",
    ),
    "empty file": ({"r.yaml": DATA, "t.jsonl": ""}, [], "r.yaml:2", "data.train: t.jsonl is empty: no rows"),
    "blank lines only": ({"r.yaml": DATA, "t.jsonl": "\n\n"}, [], "r.yaml:2", "t.jsonl is empty: no rows"),
    "CSV header only": ({"r.yaml": CSV, "t.csv": csv_rows(0)}, [], "r.yaml:2", "data.train: t.csv is empty: no rows"),
    "empty Parquet": (
        {"r.yaml": PARQUET, "t.parquet": parquet({"prompt": [], "answer": []})},
        [],
        "r.yaml:2",
        "data.train: t.parquet is empty: no rows",
    ),
    "not Parquet": (
        {"r.yaml": PARQUET, "t.parquet": "prompt,answer\n"},
        [],
        "r.yaml:2",
        "data.train: t.parquet: not a Parquet file: ",
    ),
    "broken JSON line": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line2='{"prompt": "b", "answer": 2')},
        [],
        "r.yaml:2",
        "data.train: t.jsonl line 2: not valid JSON: Expecting ',' delimiter (column 28)",
    ),
    "JSON line with more after it": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line4='{"prompt": "b", "answer": "2"} x')},
        [],
        "r.yaml:2",
        "t.jsonl line 4: not valid JSON: Extra data (column 32)",
    ),
    "JSON line not an object": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line5='"1+1="')},
        [],
        "r.yaml:2",
        "t.jsonl line 5: a row is a JSON object with a 'prompt' key, got str \"1+1=\"",
    ),
    "key twice": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line2='{"prompt": "a", "prompt": "b", "answer": "1"}')},
        [],
        "r.yaml:2",
        "t.jsonl line 2: key 'prompt' given twice in one object",
    ),
    # the second '"answer"' begins at column 17 of line 2, where a ',' should be
    "broken JSON array": (
        {
            "r.yaml": OK + "data: {task: null, train: t.json, eval_size: 2}\n",
            "t.json": '[{"prompt": "a", "answer": "1"},\n {"prompt": "b" "answer": "2"}]\n',
        },
        [],
        "r.yaml:2",
        "data.train: t.json line 2: not valid JSON: Expecting ',' delimiter (column 17)",
    ),
    "JSON array row without a prompt": (
        {
            "r.yaml": OK + "data: {task: null, train: t.json, eval_size: 2}\n",
            "t.json": json.dumps([{"prompt": "a", "answer": "1"}, {"answer": "2"}]),
        },
        [],
        "r.yaml:2",
        "t.json row 1: no 'prompt' key (keys: ['answer'])",
    ),
    "CSV row with a field too many": (
        {"r.yaml": CSV, "t.csv": csv_rows(10, line3="1+1=,2,3")},
        [],
        "r.yaml:2",
        "data.train: t.csv line 3: 3 fields, the header has 2",
    ),
    "CSV row with a field too few": (
        {"r.yaml": CSV, "t.csv": csv_rows(10, line4="1+1=")},
        [],
        "r.yaml:2",
        "data.train: t.csv line 4: 1 field, the header has 2",
    ),
    "CSV quote never closed": (
        {"r.yaml": CSV, "t.csv": csv_rows(3, line2='"1+1=,2')},
        [],
        "r.yaml:2",
        "t.csv line 2: 1 field, the header has 2 (a quoted field runs from there to line 4)",
    ),
    # line 1 is 31 bytes and a newline, and the 0xff comes after 12 bytes of line 2: offset 32 + 12
    "not UTF-8": (
        {
            "r.yaml": DATA,
            "t.jsonl": jsonl(10, line1='{"prompt": "ok", "answer": "1"}')
            .encode()
            .replace(b'{"prompt": "1+1="', b'{"prompt": "\xff+1=', 1),
        },
        [],
        "r.yaml:2",
        "data.train: t.jsonl line 2: not UTF-8 text: byte 0xff at byte offset 44",
    ),
    # "prompt,answer\n" is 14 bytes, "0+1=,1\n" 7: the 0xe9 of line 3 is at 14 + 7 + 1
    "not UTF-8, CSV": (
        {"r.yaml": CSV, "t.csv": csv_rows(10).encode().replace(b"1+1=", b"1\xe9+1=", 1)},
        [],
        "r.yaml:2",
        "data.train: t.csv line 3: not UTF-8 text: byte 0xe9 at byte offset 22",
    ),
    "prompt null": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line6='{"prompt": null, "answer": "1"}')},
        [],
        "r.yaml:2",
        "t.jsonl line 6: the prompt should be a string or a list of chat messages ({role, content} each), got null",
    ),
    "prompt a number": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line6='{"prompt": 5, "answer": "1"}')},
        [],
        "r.yaml:2",
        "t.jsonl line 6: the prompt should be a string or a list of chat messages ({role, content} each), got int 5",
    ),
    "prompt empty, CSV": (
        {"r.yaml": CSV, "t.csv": csv_rows(10, line5=",4")},
        [],
        "r.yaml:2",
        "t.csv line 5: the prompt should be a string or a list of chat messages ({role, content} each), got null",
    ),
    "prompt empty": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10, line2='{"prompt": "", "answer": "1"}')},
        [],
        "r.yaml:2",
        "t.jsonl line 2: the prompt is empty",
    ),
    "prompts of two kinds": (
        {
            "r.yaml": DATA,
            "t.jsonl": jsonl(10, line3='{"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}'),
        },
        [],
        "r.yaml:2",
        "t.jsonl line 3: the prompt is chat messages, but line 1's is a string: the prompts of a file are all "
        "strings or all chat messages",
    ),
    "broken eval file": (
        {
            "r.yaml": OK + "data:\n  task: null\n  train: t.jsonl\n  eval: e.jsonl\n",
            "t.jsonl": jsonl(10),
            "e.jsonl": "{\n",
        },
        [],
        "r.yaml:5",
        "data.eval: e.jsonl line 1: not valid JSON: ",
    ),
    # ---- splits: the held-out slice of a train file is min(eval_size, rows // 5) rows (rlkit.data.load_task)
    "fewer rows than eval_size": (
        {"r.yaml": OK + "data: {task: null, train: t.jsonl}\n", "t.jsonl": jsonl(10)},
        [],
        "r.yaml:2",
        "data.train: t.jsonl has 10 rows, fewer than the data.eval_size=200 "
        "held out for evaluation; lower data.eval_size or give a data.eval file",
    ),
    "fewer rows than eval_size, from an override": (
        {"r.yaml": DATA, "t.jsonl": jsonl(10)},
        ["data.eval_size=11"],
        "override 'data.eval_size=11'",
        "data.train: t.jsonl has 10 rows, fewer than the data.eval_size=11 held out",
    ),
    "too few rows to hold a fifth out": (
        {"r.yaml": DATA, "t.jsonl": jsonl(4)},
        [],
        "r.yaml:2",
        "data.train: t.jsonl has 4 rows: the slice held out for evaluation, a fifth "
        "of them, would be empty; give at least 5 rows or a data.eval file",
    ),
    "every built-in problem held out": (
        {"r.yaml": OK + "data: {eval_size: 10000}\n"},
        [],
        "r.yaml:2",
        "data.eval_size: 10000 held-out problems leave none of the 10000 of builtin:addition to train on",
    ),
    # 50 rows, 10 held out (50 // 5 = 10 = eval_size): 40 to train on
    "warm start validating on every training row": (
        {
            "r.yaml": OK + "data: {task: null, train: t.jsonl, eval_size: 10}\nmodel:\n  warm_start: {val_size: 40}\n",
            "t.jsonl": jsonl(50),
        },
        [],
        "r.yaml:4",
        "model.warm_start.val_size: 40 validation rows leave none of the "
        "40 training rows for the warm start to train on",
    ),
    "teacher warm start validating on every training row": (
        {"r.yaml": TEACHER + "objective: {preset: opd}\n"},
        ["teacher.warm_start.val_size=9800"],
        "override 'teacher.warm_start.val_size=9800'",
        "teacher.warm_start.val_size: 9800 validation rows leave none of the 9800 training rows",
    ),
    # ---- settings that train wrongly
    "negative max_grad_norm": (
        {"r.yaml": OK + "trainer:\n  max_grad_norm: -1\n"},
        [],
        "r.yaml:3",
        "trainer.max_grad_norm: Input should be greater than or equal to 0",
    ),
    "negative KL beta": (
        {"r.yaml": OK + "objective:\n  kl: {beta: -1}\n"},
        [],
        "r.yaml:3",
        "objective.kl.beta: Input should be greater than or equal to 0",
    ),
    "negative KL beta, from an override": (
        {"r.yaml": OK + "objective: {preset: dapo}\n"},
        ["objective.kl.beta=-1"],
        "override 'objective.kl.beta=-1'",
        "objective.kl.beta: Input should be greater than or equal to 0",
    ),
    "negative KL-in-reward beta": (
        {"r.yaml": OK + "objective:\n  kl: {type: kl_in_reward, beta: -0.1}\n"},
        [],
        "r.yaml:3",
        "objective.kl.beta: Input should be greater than or equal to 0",
    ),
    "negative entropy bonus": (
        {"r.yaml": OK + "objective:\n  entropy_bonus: -0.01\n"},
        [],
        "r.yaml:3",
        "objective.entropy_bonus: should be a number >= 0, got -0.01: the loss subtracts it "
        "times the policy's entropy, so a negative one would drive the entropy down",
    ),
    "entropy bonus not a number": (
        {"r.yaml": OK + "objective:\n  entropy_bonus: lots\n"},
        [],
        "r.yaml:3",
        "objective.entropy_bonus: should be a number >= 0, got 'lots'",
    ),
    "negative distillation coefficient": (
        {"r.yaml": TEACHER + "objective:\n  surrogate: {type: opd_sampled, coef: -1}\n"},
        [],
        "r.yaml:4",
        "objective.surrogate.coef: Input should be greater than or equal to 0",
    ),
    "negative reward coefficient": (
        {"r.yaml": TEACHER + "objective:\n  surrogate: {type: opd_sampled, reward_coef: -0.5}\n"},
        [],
        "r.yaml:4",
        "objective.surrogate.reward_coef: Input should be greater than or equal to 0",
    ),
    "negative token weight": (
        {"r.yaml": OK + "objective:\n  preset: tw_grpo\n  weighting: [{type: tw_grpo, alpha: -1}]\n"},
        [],
        "r.yaml:4",
        "objective.weighting.0.alpha: Input should be greater than or equal to 0",
    ),
    "negative Dr. GRPO constant": (
        {"r.yaml": OK + "objective:\n  preset: dr_grpo\n  aggregation: {norm: -16}\n"},
        [],
        "r.yaml:4",
        "objective.aggregation.norm: Input should be greater than 0",
    ),
    "negative std epsilon": (
        {"r.yaml": OK + "objective:\n  advantage: {eps: -1}\n"},
        [],
        "r.yaml:3",
        "objective.advantage.eps: Input should be greater than or equal to 0",
    ),
    "one sample per prompt": (
        {"r.yaml": OK + "rollout:\n  samples_per_prompt: 1\n"},
        [],
        "r.yaml:3",
        "rollout.samples_per_prompt: 1 sample per prompt makes every advantage 0 (the "
        "group_zscore advantage compares each completion with the others of its prompt), so "
        "the policy gets no gradient at any step; sample at least 2",
    ),
    "one sample per prompt, RLOO": (
        {"r.yaml": OK + "rollout: {samples_per_prompt: 1}\n"},
        ["objective.advantage.type=rloo"],
        "override 'objective.advantage.type=rloo'",
        "rollout.samples_per_prompt: 1 sample per prompt makes every advantage 0 (the rloo advantage",
    ),
    "one sample per prompt, from an override of the preset": (
        {"r.yaml": TEACHER + "rollout: {samples_per_prompt: 1}\nobjective: {preset: opd}\n"},
        ["objective.preset=dapo"],
        "override 'objective.preset=dapo'",
        "rollout.samples_per_prompt: 1 sample per prompt",
    ),
    "one sample per prompt, task reward mixed into distillation": (
        {
            "r.yaml": TEACHER + "rollout: {samples_per_prompt: 1}\nobjective:\n  surrogate: {type: opd_sampled, "
            "reward_coef: 0.5}\n"
        },
        [],
        "r.yaml:3",
        "rollout.samples_per_prompt: 1 sample per prompt",
    ),
    "no room for a prompt": (
        {"r.yaml": OK + "rollout:\n  max_new_tokens: 256\n"},
        [],
        "r.yaml:3",
        "rollout.max_new_tokens: 256 new tokens leave no room for a prompt in the 256 positions "
        "of model.path=builtin:tiny (max_position_embeddings in its config.json)",
    ),
    "no room for a prompt, local model": (
        {"r.yaml": OK + "model: {path: m}\nrollout: {max_new_tokens: 64}\n", "m": model_folder(10, 10, positions=64)},
        [],
        "r.yaml:3",
        "rollout.max_new_tokens: 64 new tokens leave no room for a prompt in the 64 positions of model.path=m",
    ),
    "no room for a prompt in the teacher": (
        {
            "r.yaml": OK + "model: {path: a}\nteacher: {path: b}\nobjective: {preset: opd}\n",
            "a": model_folder(10, 10, positions=1024),
            "b": model_folder(10, 10, positions=64),
        },
        ["rollout.max_new_tokens=100"],
        "override 'rollout.max_new_tokens=100'",
        "rollout.max_new_tokens: 100 new tokens leave no room for a prompt in the 64 positions of teacher.path=b",
    ),
    # ---- output_dir: created and written to, then removed again
    "output_dir in /proc": (
        {"r.yaml": "output_dir: /proc/rlkit-check\n"},
        [],
        "r.yaml:1",
        "output_dir: cannot create the folder /proc/rlkit-check: No such file or directory",
    ),
    "output_dir is a file": ({"r.yaml": "output_dir: r.yaml\n"}, [], "r.yaml:1", "output_dir: r.yaml is a file"),
    "output_dir under a file": (
        {"r.yaml": OK},
        ["output_dir=r.yaml/run"],
        "override 'output_dir=r.yaml/run'",
        "output_dir: r.yaml is a file, not a folder",
    ),
}


@pytest.mark.parametrize("files, overrides, where, fragment", CASES.values(), ids=CASES)
def test_malformed_recipe_fails_in_one_line(files, overrides, where, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        if callable(content):
            content(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["check", "r.yaml", *overrides]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {where}") and fragment in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    "files, overrides",
    [
        pytest.param({"r.yaml": OK + "trainer: {max_grad_norm: 0}\n"}, [], id="clipping off, as null"),
        pytest.param({"r.yaml": OK + "rollout: {max_new_tokens: 255}\n"}, [], id="room for a prompt of one token"),
        pytest.param(
            {"r.yaml": TEACHER + "rollout: {samples_per_prompt: 1}\nobjective: {preset: opd}\n"},
            [],
            id="distillation from one sample per prompt: no advantage",
        ),
        pytest.param(
            {"r.yaml": DATA, "t.jsonl": jsonl(10, line5="")}, [], id="blank JSON line, skipped as datasets does"
        ),
        pytest.param({"r.yaml": CSV, "t.csv": csv_rows(10, line5="")}, [], id="blank CSV line"),
        pytest.param({"r.yaml": CSV, "t.csv": "\ufeff" + csv_rows(10)}, [], id="CSV with a byte-order mark"),
        pytest.param(
            {
                "r.yaml": OK + "data: {task: null, train: t.json, eval_size: 2}\n",
                "t.json": json.dumps(
                    [{"prompt": [{"role": "user", "content": f"{i}+1="}], "answer": str(i + 1)} for i in range(10)]
                ),
            },
            [],
            id="JSON array of chats",
        ),
        pytest.param(
            {"r.yaml": PARQUET, "t.parquet": parquet({"prompt": [f"{i}+1=" for i in range(10)], "answer": ["1"] * 10})},
            [],
            id="Parquet",
        ),
        pytest.param({"r.yaml": DATA, "t.jsonl": jsonl(5)}, ["data.eval_size=1"], id="five rows, one held out"),
        pytest.param(
            {"r.yaml": DATA, "t.jsonl": jsonl(2), "e.jsonl": jsonl(1)},
            ["data.eval=e.jsonl"],
            id="eval file: nothing held out of the train file",
        ),
        pytest.param(
            {
                "r.yaml": DATA + "rewards:\n  - {verifier: exact_number, when: {task: sum}}\n"
                "  - {verifier: regex_format, when: {task: format}}\n",
                "t.jsonl": "".join(
                    json.dumps(row) + "\n"
                    for row in [{"prompt": "x", "task": "format", "pattern": "."}]
                    + [{"prompt": f"{i}+1=", "answer": str(i + 1), "task": "sum"} for i in range(9)]
                ),
            },
            [],
            id="routed rows lack the columns only the other verifier reads",
        ),
        pytest.param(
            {"r.yaml": OK + "rewards:\n  - {verifier: overlong, kwargs: {max_length: 5, cache_length: 2}}\n"},
            [],
            id="verifier arguments in kwargs",
        ),
    ],
)
def test_recipe_that_can_train_passes(files, overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        content(tmp_path / name) if callable(content) else (tmp_path / name).write_text(content)
    assert main(["check", "r.yaml", *overrides]) == 0, capsys.readouterr().err


def test_check_reads_the_file_types_training_loads():
    from rlkit.data import LOCAL_FORMATS

    assert set(READERS) == set(LOCAL_FORMATS)


def test_check_leaves_no_output_dir_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(OK)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert main(["check", "r.yaml", "output_dir=new/runs/a"]) == 0
    assert main(["check", "r.yaml", "output_dir=kept/runs/a"]) == 0
    too_long = "x" * 300  # over any file system's name limit: made 'new', then failed
    assert main(["check", "r.yaml", f"output_dir=new/{too_long}"]) == 2
    assert "output_dir: cannot create the folder new/" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "kept",
        "kept/notes.txt",
        "r.yaml",
    ]


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no sysfs")
def test_output_dir_that_cannot_be_written_in(tmp_path, monkeypatch, capsys):
    """sysfs refuses new files to every user, root included."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("output_dir: /sys/kernel\n")
    assert main(["check", "r.yaml"]) == 2
    assert (
        capsys.readouterr().err == "error: r.yaml:1: output_dir: cannot write in the folder /sys/kernel: "
        "Permission denied\n"
    )


def test_train_keeps_the_output_dir_it_makes(tmp_path):
    from rlkit.recipe import load_recipe

    (tmp_path / "r.yaml").write_text(f"output_dir: {tmp_path / 'runs' / 'a'}\n")
    load_recipe(tmp_path / "r.yaml", make_output_dir=True)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["a"] and not list((tmp_path / "runs" / "a").iterdir())


def test_check_of_a_bad_data_file_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "r.yaml").write_text(DATA)
    (tmp_path / "t.jsonl").write_text(jsonl(10, line2='{"prompt": "b", "answer": 2'))
    result = subprocess.run(
        [sys.executable, "-m", "rlkit.cli", "check", "r.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "error: r.yaml:2: data.train: t.jsonl line 2: not valid JSON: Expecting ',' delimiter (column 28)\n"
    )


def test_model_folder_that_fits_passes(tmp_path):
    check_model_folder(model_folder(10, 10)(tmp_path / "m"))


def test_added_token_beyond_the_embedding_fails(tmp_path):
    folder = model_folder(10, 10, added_tokens_decoder={"10": {"content": "<|im_end|>", "special": True}})
    message = "token '<|im_end|>' with id 10, but config.json's vocab_size is 10"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_model_folder(folder(tmp_path / "m"))


def test_unreadable_files_fail_with_their_name(tmp_path):
    folder = model_folder(10, 10)(tmp_path / "m")
    (folder / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        check_model_folder(folder)
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json is not a tokenizer"):
        check_model_folder(folder)


def test_a_folder_saved_by_transformers(tmp_path):
    """The files as transformers writes them: the built-in tokenizer, with its special tokens."""
    fits, short = tmp_path / "fits", tmp_path / "short"
    save = (
        "import sys; from transformers import LlamaConfig; from rlkit.models import build_char_tokenizer\n"
        "tokenizer = build_char_tokenizer(); tokenizer.save_pretrained(sys.argv[1])\n"
        "LlamaConfig(vocab_size=len(tokenizer)).save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", save, str(fits)], check=True)  # transformers stays out of this process
    check_model_folder(fits)
    shutil.copytree(fits, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] - 1}))
    with pytest.raises(ValueError, match=f"with id {config['vocab_size'] - 1}, but config.json's vocab_size is"):
        check_model_folder(short)
    assert same_tokenizer(fits, short) is None


def test_same_tokenizer_names_the_first_difference(tmp_path):
    a = model_folder(10, 10, eos_token="w9")(tmp_path / "a")
    assert same_tokenizer(a, model_folder(10, 10, eos_token="w9")(tmp_path / "same")) is None
    assert (
        same_tokenizer(a, model_folder(10, 8)(tmp_path / "fewer"))
        == f"token 'w8' has id 8 in {a} and None in {tmp_path / 'fewer'}"
    )
    assert (
        same_tokenizer(a, model_folder(10, 10, eos_token={"content": "w1"})(tmp_path / "eos"))
        == f"eos_token is 'w9' in {a} and 'w1' in {tmp_path / 'eos'}"
    )
    split = model_folder(10, 10, eos_token="w9")(tmp_path / "split")
    tokenizer = Tokenizer.from_file(str(split / "tokenizer.json"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(split / "tokenizer.json"))
    assert same_tokenizer(a, split) == f"the 'pre_tokenizer' of tokenizer.json differs between {a} and {split}"


def test_check_imports_no_transformers(tmp_path):
    """Checking a local model folder and a user's verifier module stays light: no transformers."""
    model_folder(10, 10)(tmp_path / "m")
    (tmp_path / "mine.py").write_text("def score(prompts, completions, **_):\n    return [0.0] * len(completions)\n")
    (tmp_path / "r.yaml").write_text(OK + "model: {path: m}\nrewards: [{verifier: 'mine.py:score'}]\n")
    code = (
        "import sys; from rlkit.cli import main; assert main(['check', 'r.yaml']) == 0; "
        "assert 'transformers' not in sys.modules, 'rlkit check imported transformers'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "r.yaml: ok" in result.stdout


def test_teacher_with_the_models_tokenizer_passes(tmp_path, monkeypatch):
    from rlkit.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    model_folder(10, 10)(tmp_path / "a")
    model_folder(12, 10)(tmp_path / "b")  # a different model, the same tokenizer
    (tmp_path / "r.yaml").write_text(OK + "model: {path: a}\nteacher: {path: b}\nobjective: {preset: opd_q3}\n")
    assert load_recipe("r.yaml").teacher.path == "b"
