"""`rlkit check` on malformed recipes: each exits 2 with one line naming the file and line (or the
override) and the problem, without loading a model."""

import pytest

from rlkit.cli import main

OK = "output_dir: out\n"

# id: (files written in the working directory, overrides of r.yaml, where, message fragment)
CASES = {
    "unknown top-level key": ({"r.yaml": OK + "trainr: {steps: 3}\n"}, [],
                              "r.yaml:2", "trainr: unknown key; did you mean 'trainer'?"),
    "unknown section key": ({"r.yaml": OK + "trainer:\n  steps: 3\n  lrr: 0.1\n"}, [],
                            "r.yaml:4", "trainer.lrr: unknown key; did you mean 'lr'?"),
    "unknown nested key": ({"r.yaml": OK + "model:\n  warm_start:\n    stepz: 3\n"}, [],
                           "r.yaml:4", "model.warm_start.stepz: unknown key; did you mean 'steps'?"),
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
                         "r.yaml:4", "rewards.1.verifier: unknown verifier 'exact_numbr'; did you mean 'exact_number'?"),
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
    "non-mapping YAML": ({"r.yaml": "- a\n- b\n"}, [], "r.yaml", "a recipe is a mapping of sections, got list"),
    "missing output_dir": ({"r.yaml": "trainer: {steps: 3}\n"}, [], "r.yaml", "output_dir: required key is missing"),
    "data task and train": ({"r.yaml": OK + "data: {task: 'builtin:addition', train: t.jsonl}\n", "t.jsonl": ""}, [],
                            "r.yaml:2", "give exactly one of data.task (built-in) and data.train (a file)"),
    "model path missing": ({"r.yaml": OK + "model: {path: nowhere}\n"}, [],
                           "r.yaml:2", "model.path: Value error, model folder 'nowhere' does not exist"),
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
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["check", "r.yaml", *overrides]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {where}") and fragment in err
    assert err.count("\n") == 1, err
