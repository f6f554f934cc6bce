"""Offline scoring of a jsonl file of completions, and the `rlkit verify` command."""

import json

import pytest

from rewards import RewardSpec
from rewards.offline import read_completions, verify_file

LINES = [
    {"prompt": "1+1?", "completion": "The answer is 2.", "answer": "2", "task": "math"},
    {"prompt": "half?", "completion": "\\boxed{0.4}", "answer": "1/2", "task": "math"},
    {"prompt": "capital?", "completion": "<think>hm</think><answer>Paris</answer>", "answer": "paris", "task": "text"},
]
SPECS = [
    RewardSpec(verifier="math", when={"task": "math"}),
    RewardSpec(verifier="string_match", when={"task": "text"}),
    RewardSpec(verifier="think_format", weight=0.5),
]


@pytest.fixture
def completions_file(tmp_path):
    path = tmp_path / "completions.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in LINES[:2]) + "\n\n" + json.dumps(LINES[2]) + "\n")
    return path


def test_read_completions(completions_file):
    prompts, completions, columns, numbers = read_completions(completions_file)
    assert prompts == ["1+1?", "half?", "capital?"]
    assert columns == {"answer": ["2", "1/2", "paris"], "task": ["math", "math", "text"]}
    assert numbers == [1, 2, 4]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "p"}\n', "x.jsonl:1: a line needs string 'prompt' and 'completion' fields"),
        (
            '{"prompt": "p", "completion": "c", "a": 1}\n{"prompt": "p", "completion": "c"}\n',
            "x.jsonl:2: columns \\[\\] differ from the first line's \\['a'\\]",
        ),
        ('{"prompt": "p", "completion": "c"}\nnot json\n', "x.jsonl:2: not valid JSON"),
        ("\n", "x.jsonl: no completions in the file"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_completions(path)


def test_verify_file_prints_per_verifier_results(completions_file, capsys):
    assert verify_file(SPECS, completions_file, workers=0) == 0
    table = capsys.readouterr().out.splitlines()[1:]
    assert [line.split() for line in table] == [
        ["verifier", "weight", "mean", "scored", "abstained", "failures", "timeouts"],
        ["math", "1.00", "0.500", "2", "1", "0", "0"],
        ["string_match", "1.00", "1.000", "1", "2", "0", "0"],
        ["think_format", "0.50", "0.333", "3", "0", "0", "0"],
        ["total", "0.833", "3", "0"],  # (1 + 0 + 1.5) / 3
    ]


def test_verify_file_reports_colliding_verifiers_by_their_labels(completions_file, capsys):
    assert (
        verify_file(
            [RewardSpec(verifier="think_format"), RewardSpec(verifier="think_format", weight=2.0)],
            completions_file,
            workers=0,
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()[2:4]
    assert [line.split()[:3] for line in table] == [
        ["think_format_0", "1.00", "0.333"],
        ["think_format_1", "2.00", "0.333"],
    ]


def test_verify_file_reports_failures_by_line(tmp_path, capsys):
    path = tmp_path / "bad_gold.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "A", "answer": "7"}) + "\n")
    assert verify_file([RewardSpec(verifier="multiple_choice")], path, workers=0) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == "line 1: multiple_choice error: ValueError: gold answer '7' names no option letter"
    )
    assert verify_file(SPECS, tmp_path / "missing.jsonl", workers=0) == 2
    assert "error:" in capsys.readouterr().err


def test_rlkit_verify_command(tmp_path, completions_file, capsys):
    from rlkit.cli import main

    recipe, train = tmp_path / "recipe.yaml", tmp_path / "train.jsonl"  # data with the column the rewards route on
    train.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1), "task": "math"}) + "\n" for i in range(10))
    )
    recipe.write_text(
        "rewards:\n  - {verifier: math, when: {task: math}}\n  - {verifier: string_match, when: {task: text}}\n"
        f"data: {{task: null, train: {train}, eval_size: 5}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    assert main(["verify", str(recipe), str(completions_file), "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{completions_file}: 3 completions, 2 verifiers, 1 workers")
    assert out[-1].split() == ["total", "0.667", "3", "0"]
