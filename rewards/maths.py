"""Math answers: extraction, then equivalence through math-verify (https://github.com/huggingface/Math-Verify)."""

from __future__ import annotations

import logging

from math_verify import parse, verify

from rewards.answers import extract_answer, last_number_string
from rewards.registry import register


class _NoTimeoutNotice(logging.Filter):
    """Drop math-verify's "Timeout is disabled" notice: we disable it on purpose (see math_equal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutNotice())


def _latex(answer: str) -> str:
    # math-verify only finds LaTeX between delimiters: parse("\\frac{\\sqrt{2}}{2}") is [].
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def math_equal(gold: str, predicted: str) -> bool:
    """Whether ``predicted`` equals ``gold`` mathematically: 1/2 = 0.5 = \\frac{1}{2} = 50\\%, sets in any
    order, intervals, units and degrees ignored. Gold goes first (math-verify's ``verify`` is asymmetric).

    math-verify's own timeouts are off: they use SIGALRM, which only works in a main thread and would
    cancel the scorer's per-sample timer (:func:`rewards.calls.call`), which bounds this call instead.
    """
    parsed_gold = parse(_latex(gold), parsing_timeout=None)
    if not parsed_gold:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
    return verify(parsed_gold, parse(_latex(predicted), parsing_timeout=None), timeout_seconds=None)


def final_answer(completion: str) -> str | None:
    """The stated answer (``\\boxed{}``, ``<answer>`` tags, "the answer is"), else the last number."""
    return extract_answer(completion) or last_number_string(completion)


@register("math")
def math(prompts, completions, answer, **_):
    """1.0 when the completion's final answer equals ``answer`` mathematically, else 0.0 (no answer: 0.0)."""
    scores = []
    for completion, gold in zip(completions, answer):
        predicted = final_answer(completion)
        scores.append(float(predicted is not None and math_equal(str(gold), predicted)))
    return scores
