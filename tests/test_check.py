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
from rlkit.recipe.model_check import check_model_folder, same_tokenizer

OK = "output_dir: out\n"


def model_folder(vocab_size: int, tokens: int, files=("config.json", "tokenizer.json"), **tokenizer_config):
    """A writer of a model folder without weights: config.json with ``vocab_size``, a word-level
    tokenizer.json with ids 0..tokens-1 and, given keys, a tokenizer_config.json."""

    def write(path: Path) -> Path:
        path.mkdir()
        if "config.json" in files:
            (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab_size}))
        if "tokenizer.json" in files:
            vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, tokens)}}
            Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(path / "tokenizer.json"))
        if tokenizer_config:
            (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        return path

    return write

# id: (files written in the working directory, overrides of r.yaml, where, message fragment)
CASES = {
    "unknown top-level key": ({"r.yaml": OK + "trainr: {steps: 3}\n"}, [],
                              "r.yaml:2", "trainr: unknown key; did you mean 'trainer'?"),
    "unknown section key": ({"r.yaml": OK + "trainer:\n  steps: 3\n  lrr: 0.1\n"}, [],
                            "r.yaml:4", "trainer.lrr: unknown key; did you mean 'lr'?"),
    "unknown nested key": ({"r.yaml": OK + "model:\n  warm_start:\n    max_stepz: 3\n"}, [],
                           "r.yaml:4", "model.warm_start.max_stepz: unknown key; did you mean 'max_steps'?"),
    "unknown reward key": ({"r.yaml": OK + "rewards:\n  - verifier: math\n    wieght: 2\n"}, [],
                           "r.yaml:4", "rewards.0.wieght: unknown key; did you mean 'weight'?"),
    "wrong type": ({"r.yaml": OK + "rollout:\n  samples_per_prompt: many\n"}, [],
                   "r.yaml:3", "rollout.samples_per_prompt: Input should be a valid integer"),
    "section not a mapping": ({"r.yaml": OK + "trainer: 5\n"}, [],
                              "r.yaml:2", "trainer: Input should be a valid dictionary"),
    "bad objective option": ({"r.yaml": OK + "objective:\n  preset: grpo\n  surrogate: {eps_hihg: 0.3}\n"}, [],
                             "r.yaml:4", "objective.surrogate.eps_hihg: unknown key; did you mean 'eps_high'?"),
    "bad objective part": ({"r.yaml": OK + "objective:\n  aggregation: {type: tokn_mean}\n"}, [],
                           "r.yaml:3", "objective.aggregation: unknown aggregation part 'tokn_mean'"),
    "unknown preset": ({"r.yaml": OK + "objective: {preset: grpoo}\n"}, [],
                       "r.yaml:2", "objective: unknown objective preset 'grpoo'"),
    "unknown verifier": ({"r.yaml": OK + "rewards:\n  - {verifier: math}\n  - verifier: exact_numbr\n"}, [],
                         "r.yaml:4",
                         "rewards.1.verifier: unknown verifier 'exact_numbr'; did you mean 'exact_number'?"),
    "unknown verifier, no close name": ({"r.yaml": OK + "rewards: [{verifier: zzz}]\n"}, [],
                                        "r.yaml:2", "unknown verifier 'zzz'; registered: ['code', 'exact_number'"),
    "verifier module missing": ({"r.yaml": OK + "rewards: [{verifier: 'mypkg.scores:f'}]\n"}, [],
                                "r.yaml:2", "rewards.0.verifier: cannot import 'mypkg.scores': "
                                            "ModuleNotFoundError: No module named 'mypkg'"),
    "verifier attribute missing": ({"r.yaml": OK + "rewards: [{verifier: 'rewards.exact:nope'}]\n"}, [],
                                   "r.yaml:2", "'rewards.exact' has no attribute 'nope'"),
    "verifier not callable": ({"r.yaml": OK + "rewards: [{verifier: 'rewards.exact:_NUMBER'}]\n"}, [],
                              "r.yaml:2", "verifier 'rewards.exact:_NUMBER' is not callable"),
    "verifier file missing": ({"r.yaml": OK + "rewards: [{verifier: 'mine.py:score'}]\n"}, [],
                              "r.yaml:2", "verifier file 'mine.py' does not exist"),
    "verifier file raises": ({"r.yaml": OK + "rewards: [{verifier: 'mine.py:score'}]\n", "mine.py": "1 / 0\n"}, [],
                             "r.yaml:2", "cannot import 'mine.py': ZeroDivisionError: division by zero"),
    "base cycle": ({"r.yaml": OK + "base: b.yaml\n", "b.yaml": "trainer: {steps: 3}\nbase: r.yaml\n"}, [],
                   "b.yaml:2", "base: base recipes form a cycle: r.yaml -> b.yaml -> r.yaml"),
    "own base": ({"r.yaml": "base: r.yaml\n" + OK}, [], "r.yaml:1", "base recipes form a cycle: r.yaml -> r.yaml"),
    "missing base": ({"r.yaml": OK + "base: b.yaml\n", "b.yaml": "base: sub/c.yaml\n"}, [],
                     "b.yaml:1", "base: base recipe 'sub/c.yaml' not found"),
    "base not a path": ({"r.yaml": OK + "base: [b.yaml]\n"}, [], "r.yaml:2", "base: should be a recipe file path"),
    "invalid YAML": ({"r.yaml": OK + "trainer:\n  steps: 3\n   lr: 1\n"}, [],
                     "r.yaml:4", "not valid YAML: mapping values are not allowed here (column 6)"),
    "unclosed YAML": ({"r.yaml": OK + "trainer: {steps: 3\n"}, [], "r.yaml:3", "not valid YAML: while parsing"),
    "not a text file": ({"r.yaml": b"\xff\xfe\x00"}, [], "r.yaml", "not a text file"),
    "duplicate key": ({"r.yaml": OK + "trainer:\n  steps: 3\n  lr: 0.1\n  steps: 4\n"}, [],
                      "r.yaml:5", "trainer.steps: duplicate key (also on line 3)"),
    "duplicate reward label": ({"r.yaml": OK + "rewards:\n  - {verifier: math, name: m}\n  - {verifier: math, name: m}\n"},
                               [], "r.yaml:4", "rewards.1: same label 'm' as rewards.0; set 'name'"),
    "non-mapping YAML": ({"r.yaml": "- a\n- b\n"}, [], "r.yaml", "a recipe is a mapping of sections, got list"),
    "missing output_dir": ({"r.yaml": "trainer: {steps: 3}\n"}, [], "r.yaml", "output_dir: required key is missing"),
    "data task and train": ({"r.yaml": OK + "data: {task: 'builtin:addition', train: t.jsonl}\n", "t.jsonl": ""}, [],
                            "r.yaml:2", "give exactly one of data.task (built-in) and data.train (a file)"),
    "model/tokenizer mismatch": ({"r.yaml": OK + "model: {path: m}\n", "m": model_folder(10, 12)}, [],
                                 "r.yaml:2", "model.path: the tokenizer of m has token 'w11' with id 11, "
                                             "but config.json's vocab_size is 10: the model has no embedding"),
    "model folder without config": ({"r.yaml": OK + "model:\n  path: m\n",
                                     "m": model_folder(10, 10, files=["tokenizer.json"])}, [],
                                    "r.yaml:3", "model.path: m has no config.json"),
    "model folder without tokenizer": ({"r.yaml": OK + "model: {path: m}\n",
                                       "m": model_folder(10, 10, files=["config.json"])}, [],
                                      "r.yaml:2", "model.path: m has no tokenizer (none of tokenizer.json, "),
    "model path is a file": ({"r.yaml": OK + "model: {path: r.yaml}\n"}, [], "r.yaml:2", "r.yaml is not a folder"),
    "model path missing": ({"r.yaml": OK + "model: {path: nowhere}\n"}, [],
                           "r.yaml:2", "model.path: Value error, model folder 'nowhere' does not exist"),
    "teacher tokenizer differs": ({"r.yaml": OK + "model: {path: a}\nteacher: {path: b}\nobjective: {preset: opd}\n",
                                   "a": model_folder(10, 10), "b": model_folder(10, 8)}, [],
                                  "r.yaml:3", "teacher.path: the teacher's tokenizer differs from the model's: "
                                              "token 'w8' has id 8 in a and None in b"),
    "built-in teacher of another tokenizer": ({"r.yaml": OK + "teacher: {path: builtin:tiny-bpe}\n"}, [], "r.yaml:2",
                                              "teacher.path: builtin:tiny-bpe does not share the tokenizer of "
                                              "model.path builtin:tiny"),
    "distillation without a teacher": ({"r.yaml": OK + "objective: {preset: opd_tip}\n"}, [],
                                       "r.yaml:2", "objective: it distills from a teacher; add a teacher: section"),
    "LoRA option under another name": ({"r.yaml": OK + "model:\n  lora: {r: 8, alpha: 16}\n"}, [],
                                       "r.yaml:3", "model.lora.alpha: unknown key; did you mean 'lora_alpha'?"),
    "LoRA rank 0": ({"r.yaml": OK + "model:\n  lora:\n    r: 0\n"}, [],
                    "r.yaml:4", "model.lora.r: Input should be greater than 0"),
    "LoRA targets neither names nor all-linear": ({"r.yaml": OK + "model:\n  lora: {target_modules: all}\n"}, [],
                                                  "r.yaml:3", "model.lora.target_modules: Value error, a list of "
                                                              "module names, or 'all-linear'; got 'all'"),
    "override of unknown key": ({"r.yaml": OK}, ["trainer.lrr=1"],
                                "override 'trainer.lrr=1'", "trainer.lrr: unknown key; did you mean 'lr'?"),
    "override without =": ({"r.yaml": OK}, ["trainer.steps"],
                           "override 'trainer.steps'", "is not of the form key.path=value"),
    "override without key": ({"r.yaml": OK}, ["trainer..steps=3"],
                             "override 'trainer..steps=3'", "is not of the form key.path=value"),
    "override value not YAML": ({"r.yaml": OK}, ["trainer.steps=[3"],
                                "override 'trainer.steps=[3'", "the value is not valid YAML: "),
    "override below a value": ({"r.yaml": OK}, ["output_dir.x=1"],
                               "override output_dir.x", "'output_dir' is not a section"),
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
    save = ("import sys; from transformers import LlamaConfig; from rlkit.models import build_char_tokenizer\n"
            "tokenizer = build_char_tokenizer(); tokenizer.save_pretrained(sys.argv[1])\n"
            "LlamaConfig(vocab_size=len(tokenizer)).save_pretrained(sys.argv[1])")
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
    assert (same_tokenizer(a, model_folder(10, 8)(tmp_path / "fewer"))
            == f"token 'w8' has id 8 in {a} and None in {tmp_path / 'fewer'}")
    assert (same_tokenizer(a, model_folder(10, 10, eos_token={"content": "w1"})(tmp_path / "eos"))
            == f"eos_token is 'w9' in {a} and 'w1' in {tmp_path / 'eos'}")
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
    code = ("import sys; from rlkit.cli import main; assert main(['check', 'r.yaml']) == 0; "
            "assert 'transformers' not in sys.modules, 'rlkit check imported transformers'")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "r.yaml: ok" in result.stdout


def test_teacher_with_the_models_tokenizer_passes(tmp_path, monkeypatch):
    from rlkit.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    model_folder(10, 10)(tmp_path / "a")
    model_folder(12, 10)(tmp_path / "b")          # a different model, the same tokenizer
    (tmp_path / "r.yaml").write_text(OK + "model: {path: a}\nteacher: {path: b}\nobjective: {preset: opd_q3}\n")
    assert load_recipe("r.yaml").teacher.path == "b"
