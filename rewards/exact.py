"""Exact answers: numbers within a tolerance (the built-in arithmetic task's verifier) and normalised strings."""

from __future__ import annotations

import re
import string

from rewards.answers import extract_answer
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


def normalize_text(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@register("string_match")
def string_match(prompts, completions, answer, normalize: bool = True, **_):
    """1.0 when the stated answer (``extract_answer``, else the whole completion) equals ``answer`` or one of
    its items if it is a list, compared after :func:`normalize_text` (or only stripped, with
    ``normalize=False``), else 0.0."""
    clean = normalize_text if normalize else str.strip
    scores = []
    for completion, gold in zip(completions, answer):
        stated = extract_answer(completion)
        golds = gold if isinstance(gold, list) else [gold]
        scores.append(float(clean(completion if stated is None else stated) in {clean(str(g)) for g in golds}))
    return scores
