"""Exact numeric answers: the verifier of the built-in arithmetic task."""

from __future__ import annotations

import re

from rewards.registry import register

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last integer or decimal in ``text``, or None if there is none."""
    found = _NUMBER.findall(text)
    return float(found[-1]) if found else None


@register("exact_number")
def exact_number(prompts, completions, answer, tolerance: float = 1e-6, **_):
    """1.0 when the last number of the completion equals ``answer`` (within ``tolerance``), else 0.0."""
    scores = []
    for completion, gold in zip(completions, answer):
        predicted = last_number(completion)
        scores.append(float(predicted is not None and abs(predicted - float(gold)) <= tolerance))
    return scores
