"""Finding the final answer a completion states."""

from __future__ import annotations

import re

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS = re.compile(r"\banswer is\s*:?\s*(.+?)(?:\.\s|\.?\s*$)", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for j in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[begin:j]
    return None  # unbalanced: the completion was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The stated final answer, by priority: the last ``\\boxed{}`` inside the last ``<answer>`` tags (or
    anywhere if there are none), else the content of those tags, else the last "the answer is X".
    Surrounding ``$`` are removed. None when the completion states no answer."""
    tagged = _ANSWER_TAG.findall(text)
    scope = tagged[-1] if tagged else text
    found = last_boxed(scope)
    if found is None and tagged:
        found = scope
    if found is None:
        said = _ANSWER_IS.findall(text)
        found = said[-1] if said else None
    return None if found is None else found.strip().strip("$").strip()


def last_number_string(text: str) -> str | None:
    """The last number written in ``text`` (sign, thousands commas and decimals kept), or None."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None
