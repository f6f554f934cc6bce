"""Multi-turn environments and the tools a model calls in them (docs/environments.md)."""

from rlkit.environments.base import ENVIRONMENTS, Environment, Reply, environment_class, shown_completion
from rlkit.environments.tools import (
    TOOLS,
    Calculator,
    ToolCall,
    ToolEnvironment,
    ToolError,
    calculator,
    parse_tool_calls,
    resolve_tool,
    run_tool,
)

__all__ = [
    "ENVIRONMENTS",
    "TOOLS",
    "Calculator",
    "Environment",
    "Reply",
    "ToolCall",
    "ToolEnvironment",
    "ToolError",
    "calculator",
    "environment_class",
    "shown_completion",
    "parse_tool_calls",
    "resolve_tool",
    "run_tool",
]
