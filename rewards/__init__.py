"""Reward verifiers for rlkit.

A verifier is a plain callable with TRL's reward-function contract::

    f(prompts: list[str], completions: list[str], **dataset_columns) -> list[float | None]

``None`` means "abstain" (the verifier does not apply to that sample). Verifiers are registered by
name with :func:`register` and found by :func:`get_verifier`, which also accepts an import path
(``package.module:function``) or a file path (``path/to/file.py:function``) for user verifiers.
"""

from rewards.registry import VERIFIERS, get_verifier, register
from rewards import exact  # noqa: F401  (registers the built-in verifiers)

__all__ = ["VERIFIERS", "get_verifier", "register"]
