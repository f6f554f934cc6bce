"""Reward verifiers for rlkit.

A verifier is a plain or async callable with TRL's reward-function contract::

    f(prompts: list[str], completions: list[str], **dataset_columns) -> list[float | None]

``None`` means "abstain" (the verifier does not apply to that sample). Verifiers are registered by
name with :func:`register` and found by :func:`get_verifier`, which also accepts an import path
(``package.module:function``) or a file path (``path/to/file.py:function``) for user verifiers.
A recipe combines them with :class:`RewardSpec` entries, scored by :class:`RewardScorer`.

Built-in: ``exact_number``, ``string_match``, ``math``, ``multiple_choice``, ``regex_format``,
``think_format``, ``overlong`` and ``code``.
"""

from rewards import choice, coding, exact, maths, shaping  # noqa: F401  (register the built-in verifiers)
from rewards.registry import VERIFIERS, get_verifier, register
from rewards.scoring import Failure, RewardScorer, RewardSpec, Scores

__all__ = ["VERIFIERS", "Failure", "RewardScorer", "RewardSpec", "Scores", "get_verifier", "register"]
