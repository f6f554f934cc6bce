"""String, number, multiple-choice, format, length and code verifiers, worked out by hand."""

import json

import pytest

from rewards.choice import multiple_choice, options, soft_choice_reward
from rewards.coding import code, extract_code
from rewards.exact import exact_number, normalize_text, string_match
from rewards.shaping import overlong, overlong_penalty, regex_format, think_format


def test_exact_number_keeps_its_behaviour():
    assert exact_number(["", "", ""], ["so 3 + 4 = 7", "7.0000001", "no number"], answer=[7, "7", 7]) == [1.0, 1.0, 0.0]
    assert exact_number([""], ["7.01"], answer=[7], tolerance=0.02) == [1.0]


def test_string_match_normalised_and_exact():
    assert normalize_text("  The  Eiffel-Tower! ") == "eiffeltower"
    completions = ["The answer is the Eiffel Tower.", "eiffel tower", "<answer>Louvre</answer>"]
    assert string_match([""] * 3, completions, answer=["Eiffel Tower", ["x", "Eiffel  tower"], "eiffel tower"]) == [
        1.0,
        1.0,
        0.0,
    ]
    assert string_match(
        [""] * 2, ["<answer> Paris </answer>", "paris"], answer=["Paris", "Paris"], normalize=False
    ) == [1.0, 0.0]


@pytest.mark.parametrize(
    "text, letters",
    [("AC", {"A", "C"}), ("A, C", {"A", "C"}), ("(B)", {"B"}), ("Option B and D", {"B", "D"}), ("none", set())],
)
def test_options(text, letters):
    assert options(text) == letters


@pytest.mark.parametrize(
    "predicted, gold, reward",
    [
        ({"A", "C"}, {"A", "C"}, 1.0),
        ({"A"}, {"A", "C"}, 0.5),
        ({"A"}, {"A", "B", "C"}, 1 / 3),
        ({"A", "D"}, {"A", "C"}, 0.0),
        (set(), {"A"}, 0.0),
        ({"B"}, {"A"}, 0.0),
    ],
)
def test_soft_choice_reward(predicted, gold, reward):
    assert soft_choice_reward(predicted, gold) == pytest.approx(reward)


def test_multiple_choice_verifier():
    completions = ["<answer>A, C</answer>", "The answer is C.", "<answer>B</answer>", "I think A"]
    assert multiple_choice([""] * 4, completions, answer=["AC", ["A", "C"], "A,C", "A"]) == [1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="names no option letter"):
        multiple_choice([""], ["<answer>A</answer>"], answer=["1"])


def test_format_verifiers():
    completions = [
        "<think>a\nb</think>\n<answer>4</answer>",
        "<think>a</think> 4",
        "<answer>4</answer>",
        "<think>a</think><answer>4</answer> trailing",
    ]
    assert think_format([""] * 4, completions) == [1.0, 0.0, 0.0, 0.0]
    assert regex_format([""] * 2, ["Answer: 12", "12"], pattern=r"Answer: \d+") == [1.0, 0.0]


@pytest.mark.parametrize("length, reward", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (101, -1.0)])
def test_overlong_penalty(length, reward):
    # L_max = 100, L_cache = 20: free up to 80, then (80 - |y|) / 20, then -1 past 100.
    assert overlong_penalty(length, max_length=100, cache_length=20) == pytest.approx(reward)


def test_overlong_counts_tokens_when_given_else_characters():
    assert overlong([""] * 2, ["x" * 90, "y"], max_length=100, cache_length=20) == [-0.5, 0.0]
    assert overlong([""] * 2, ["x" * 90, "y"], max_length=100, cache_length=20, completion_tokens=[10, 101]) == [
        0.0,
        -1.0,
    ]
    with pytest.raises(ValueError, match="0 < cache_length <= max_length"):
        overlong([""], ["x"], max_length=10, cache_length=20)


def test_extract_code():
    assert extract_code("see:\n```\nprint(1)\n```\nand\n```python\nprint(2)\n```\n```text\nout\n```") == "print(2)\n"
    assert extract_code("x\n```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("print(4)") == "print(4)"


def test_code_verifier_scores_fraction_of_tests_passed():
    completion = "Here:\n```python\ndef add(a, b):\n    return a + b if a < 5 else 0\n```"
    tests = [
        {"assert": "assert add(1, 2) == 3"},
        {"assert": "assert add(2, 2) == 4"},
        {"assert": "assert add(5, 1) == 6"},
    ]
    program = "```python\nprint(sum(map(int, input().split())))\n```"
    io_tests = json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "5\n"}])
    assert code(["", ""], [completion, program], tests=[tests, io_tests], limits={"timeout_s": 2}) == pytest.approx(
        [2 / 3, 1 / 2]
    )
    with pytest.raises(ValueError, match="at least one test case"):
        code([""], ["pass"], tests=[[]])
    with pytest.raises(TypeError, match="unexpected keyword argument 'wall'"):
        code([""], ["pass"], tests=[[{"assert": "pass"}]], limits={"wall": 1})
