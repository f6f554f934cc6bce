"""The environment boundary: what a multi-turn episode asks of the task it runs in.

::

    dataset row --Environment(row)--> episode
    model's turn (text) --env.step--> Reply: messages for the model (tool results, a user turn) or the end,
                                      plus any reward

The rollout loop (:func:`rlkit.rollout.episodes.run_episodes`) owns the tokens: it keeps the model's turns
exactly as sampled and encodes each reply once, as the chat template renders it. An environment only
sees and returns text, so it needs no tokenizer. Environments are chosen in the recipe,
``environment: {name: calculator | tools | module:Class, ...}``, registered by name or found by import path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Reply:
    """An environment's answer to one model turn."""

    messages: list[dict] = field(default_factory=list)  # chat messages for the model ({"role": "tool", ...})
    done: bool = False  # the episode is over: the model's turn was its final answer
    reward: float = 0.0  # added to the episode's reward (summed over its turns)
    tool_calls: int = 0  # calls the turn made (for the metrics)
    tool_errors: dict[str, int] = field(default_factory=dict)  # failed calls by kind (ToolError.KINDS)


class Environment:
    """One episode per dataset row. Subclasses implement :meth:`step`. The episode's ``tools`` (the class's
    ``default_tools`` and the recipe's ``environment.tools``) are offered to the model through the chat
    template (``apply_chat_template(..., tools=...)``) on every prompt."""

    default_tools: ClassVar[list[Callable]] = []

    def __init__(self, row: dict[str, Any], tools: list[Callable], options: dict[str, Any]):
        self.row = row  # the episode's dataset columns (prompt, answer, ...)
        self.tools = {fn.__name__: fn for fn in tools}
        self.options = options  # the recipe's environment.options

    def step(self, turn: str) -> Reply:
        """The reply to the model's ``turn`` (its text, special tokens removed)."""
        raise NotImplementedError


def shown_completion(sample: dict) -> str:
    """What the samples log and the trackers' completion tables show of a sample: a multi-turn episode's
    turns on one line, each after its role
    (``[assistant] <tool_call>... [tool] 1665 [assistant] Answer: 1665``), else the completion."""
    if "episode" not in sample:
        return sample["completion"]
    return " ".join(f"[{m['role']}] {m['content']}" for m in sample["episode"])


ENVIRONMENTS: dict[str, str] = {  # registered name -> import path, so that `rlkit check` imports nothing heavy
    "tools": "rlkit.environments.tools:ToolEnvironment",
    "calculator": "rlkit.environments.tools:Calculator",
}


def environment_class(name: str) -> type[Environment]:
    """The environment class for a registered name or an import path ``module:Class``."""
    path = ENVIRONMENTS.get(name, name)
    if ":" not in path:
        raise KeyError(
            f"unknown environment {name!r}; registered: {sorted(ENVIRONMENTS)}, or an import path module:Class"
        )
    module, attr = path.rsplit(":", 1)
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise TypeError(f"{name} is not an rlkit Environment")
    return cls
