"""Code: the fraction of test cases that the completion's Python program passes, run in the sandbox."""

from __future__ import annotations

import json
import re

from rewards.registry import register
from rewards.sandbox import Limits, run_tests

_FENCED = re.compile(r"```(python|py)?[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The last fenced block tagged python (else the last fenced block; else the whole completion)."""
    blocks = _FENCED.findall(completion)
    python = [code for tag, code in blocks if tag]
    return (python or [code for _, code in blocks] or [completion])[-1]


@register("code")
def code(prompts, completions, tests, limits: dict | None = None, python: str = "python3", **_):
    """Fraction of ``tests`` passed: a list (or its JSON text) of ``{"assert": ...}`` or
    ``{"input": ..., "output": ...}`` cases (see :func:`rewards.sandbox.run_tests`), run with the
    per-test ``limits`` (fields of :class:`rewards.sandbox.Limits`). Give the recipe entry a
    ``timeout_s`` above ``len(tests) * limits.timeout_s + 5`` so that a slow solution gets its partial
    score rather than a timeout."""
    bounds = Limits(**(limits or {}))
    scores = []
    for completion, cases in zip(completions, tests):
        cases = json.loads(cases) if isinstance(cases, str) else cases
        if not cases:
            raise ValueError("a code sample needs at least one test case")
        scores.append(sum(run_tests(extract_code(completion), cases, bounds, python)) / len(cases))
    return scores
