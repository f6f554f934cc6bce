"""An environment as a run uses it: its class, its tools, their schemas and the episode limits, from the
recipe's ``environment`` section."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlkit.environments.base import Environment, environment_class
from rlkit.environments.tools import resolve_tool

if TYPE_CHECKING:
    from rlkit.recipe.schema import EnvironmentConfig


@dataclass(frozen=True)
class EnvironmentSpec:
    cls: type[Environment]
    tools: list[Callable]  # the class's default tools, then the recipe's
    options: dict[str, Any]
    max_turns: int
    max_tokens: int

    @staticmethod
    def from_config(cfg: EnvironmentConfig) -> EnvironmentSpec:
        """Resolves the environment and every tool (a bad name raises here, before any model loads)."""
        cls = environment_class(cfg.name)
        tools = list(cls.default_tools) + [resolve_tool(t) for t in cfg.tools]
        return EnvironmentSpec(cls, tools, dict(cfg.options), cfg.max_turns, cfg.max_tokens)

    def schemas(self) -> list[dict] | None:
        """The tools' JSON schemas, as ``apply_chat_template(tools=...)`` takes them (None: no tools). A tool
        without type hints or an ``Args:`` docstring raises transformers' error, naming it."""
        from transformers.utils import get_json_schema

        return [get_json_schema(fn) for fn in self.tools] or None

    def make(self, row: dict[str, Any]) -> Environment:
        """The environment of one episode, for its dataset ``row``."""
        return self.cls(row, self.tools, self.options)
