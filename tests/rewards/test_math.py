"""Math answers: extraction, and a table of equivalences and near-misses through math-verify."""

import pytest

from rewards.answers import extract_answer, last_boxed, last_number_string
from rewards.maths import math, math_equal

EQUIVALENT = [
    # fractions and decimals
    ("0.5", "1/2"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac12", "\\dfrac{1}{2}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    # LaTeX forms
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("$\\frac{3}{4}$", "0.75"),
    ("\\boxed{7}", "7"),
    # sets and intervals
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("1,2", "2,1"),
    ("(0,1]", "(0, 1]"),
    ("(-\\infty, 2)", "(-\\infty,2)"),
    # units and degrees
    ("5", "5 \\text{ cm}"),
    ("5\\text{ cm}", "5"),
    ("90^\\circ", "90"),
    # negatives
    ("-3", "-3.0"),
    ("-\\frac{1}{2}", "-0.5"),
    # percentages and thousands separators
    ("50\\%", "0.5"),
    ("0.5", "50\\%"),
    ("50\\%", "50"),
    ("1000", "1,000"),
]

NEAR_MISSES = [
    ("1/3", "0.33"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("0.5", "0.05"),
    ("12", "1.2"),
    ("2", "2.01"),
    ("\\sqrt{2}", "1.414"),
    ("\\pi", "3.14159"),
    ("x+1", "x-1"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("(0,1)", "[0,1]"),
    ("(0,1]", "(0,1)"),
    ("-2", "2"),
    ("5", "-5"),
    ("50\\%", "5"),
    ("1000", "100"),
]


@pytest.mark.parametrize("gold, predicted", EQUIVALENT)
def test_equivalent_answers_match(gold, predicted):
    assert math_equal(gold, predicted)


@pytest.mark.parametrize("gold, predicted", NEAR_MISSES)
def test_near_misses_do_not_match(gold, predicted):
    assert not math_equal(gold, predicted)


def test_unparseable_gold_is_an_error():
    with pytest.raises(ValueError, match="cannot parse the gold answer ''"):
        math_equal("", "1")


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so \\boxed{\\frac{1}{2}}. Then \\boxed{3}", "3"),
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("<think>maybe \\boxed{4}</think><answer> 5 </answer>", "5"),
        ("<answer>it is \\boxed{6}</answer>", "6"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The final answer is: 3.5 meters. Check: 3.5 + 1 = 4.5", "3.5 meters"),
        ("I got 7 and then 9", None),
        ("cut off \\boxed{\\frac{1}{2", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_and_last_number():
    assert last_boxed("no box") is None
    assert last_number_string("x = -1,234.5 then 7 and -.5") == "-.5"
    assert last_number_string("total: -1,234.5") == "-1,234.5"
    assert last_number_string("none") is None


def test_math_verifier_scores_a_batch():
    completions = ["... so \\boxed{\\dfrac{1}{2}}", "<answer>0.25</answer>", "it is 2 of 4, i.e. 0.5", "I have no idea"]
    assert math([""] * 4, completions, answer=["0.5", "1/2", "\\frac{1}{2}", "1/2"]) == [1.0, 0.0, 1.0, 0.0]
