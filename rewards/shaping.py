"""Format and length shaping: rewards on how a completion is written, not on whether it is right."""

from __future__ import annotations

import re

from rewards.registry import register

THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"


@register("regex_format")
def regex_format(prompts, completions, pattern: str, **_):
    """1.0 when the whole completion (stripped) matches ``pattern`` (``re.fullmatch``, ``.`` matching
    newlines), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]


@register("think_format")
def think_format(prompts, completions, **_):
    """1.0 for ``<think>...</think>`` then ``<answer>...</answer>`` and nothing else (the DeepSeek-R1 format
    reward, as in open-r1), else 0.0."""
    return regex_format(prompts, completions, THINK_ANSWER)


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), with L_max = ``max_length``, L_cache =
    ``cache_length``:  0 if |y| <= L_max - L_cache;  ((L_max - L_cache) - |y|) / L_cache if
    L_max - L_cache < |y| <= L_max;  -1 if |y| > L_max."""
    budget = max_length - cache_length
    if length <= budget:
        return 0.0
    if length <= max_length:
        return (budget - length) / cache_length
    return -1.0


@register("overlong")
def overlong(prompts, completions, max_length: int, cache_length: int, completion_tokens=None, **_):
    """:func:`overlong_penalty` of each completion. The length is its token count when the batch has a
    ``completion_tokens`` column (the trainer passes it), else its number of characters; ``max_length``
    and ``cache_length`` are in the same unit."""
    if not 0 < cache_length <= max_length:
        raise ValueError(f"overlong needs 0 < cache_length <= max_length, got {cache_length} and {max_length}")
    lengths = completion_tokens if completion_tokens is not None else [len(c) for c in completions]
    return [overlong_penalty(int(n), max_length, cache_length) for n in lengths]
