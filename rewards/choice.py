"""Multiple-choice answers, with partial credit for questions that have several correct options."""

from __future__ import annotations

import re

from rewards.answers import extract_answer
from rewards.registry import register

_OPTIONS = re.compile(r"\b[A-Z]+\b")  # "B", "AC", "A, C", "(B)", "A and C"; not "Option"


def options(text: str) -> set[str]:
    """The option letters named in ``text``: every letter of each all-capitals word."""
    return {letter for word in _OPTIONS.findall(text) for letter in word}


def soft_choice_reward(predicted: set[str], gold: set[str]) -> float:
    """TW-GRPO's soft multiple-choice reward ("Reinforcing Video Reasoning with Focused Thinking", Dang et
    al. 2025): 1 if S_pred = S_gt; |S_pred| / |S_gt| if S_pred is a proper subset of S_gt; 0 if S_pred
    names any wrong option (or is empty)."""
    return len(predicted) / len(gold) if predicted <= gold else 0.0


@register("multiple_choice")
def multiple_choice(prompts, completions, answer, **_):
    """Soft reward of the options stated in the completion (``extract_answer``: tags, ``\\boxed{}``, "the
    answer is") against ``answer`` ("AC", "A, C" or ["A", "C"]); no stated answer scores 0."""
    scores = []
    for completion, gold in zip(completions, answer):
        gold_set = options(" ".join(gold) if isinstance(gold, list) else str(gold))
        if not gold_set:
            raise ValueError(f"gold answer {gold!r} names no option letter")
        stated = extract_answer(completion)
        scores.append(soft_choice_reward(options(stated or ""), gold_set))
    return scores
