"""Tools: plain Python functions the model calls in its turns, and the environment that runs them.

A tool is a function with type hints and a Google-style docstring (``Args:``); its JSON schema is
transformers' ``get_json_schema`` (what ``apply_chat_template(tools=...)`` renders). The model calls tools in
the Hermes / Qwen format, one JSON object per call::

    <tool_call>{"name": "calculator", "arguments": {"expression": "37*45"}}</tool_call>

Nothing a tool or the model does stops an episode, let alone the run: a malformed call, an unknown tool,
arguments that do not fit its signature, a tool that raises, and one that runs past ``tool_timeout_s`` each
become an error message to the model (``{"role": "tool", "content": "error: ..."}``), counted by kind.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import json
import operator
import re
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rewards.calls import VerifierTimeout, time_limit
from rlkit.environments.base import Environment, Reply

TOOL_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolError:
    """A call that produced no result; ``kind`` is one of ``KINDS``."""

    KINDS: ClassVar = ("malformed", "unknown_tool", "bad_arguments", "raised", "timeout")
    kind: str
    message: str


def parse_tool_calls(text: str) -> list[ToolCall | ToolError]:
    """Every ``<tool_call>...</tool_call>`` block of ``text``, in order (parallel calls: several blocks); an
    unclosed block at the end, JSON that does not parse, or an object without a string ``name`` and an
    ``arguments`` object (or a JSON string of one, as some models write it) is a ``malformed`` error."""
    calls: list[ToolCall | ToolError] = []
    for match in TOOL_CALL.finditer(text):
        body, closed = match.group(1).strip(), bool(match.group(2))
        calls.append(_parse_call(body) if closed else ToolError("malformed", "unclosed <tool_call>"))
    return calls


def _parse_call(body: str) -> ToolCall | ToolError:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolError("malformed", f"not JSON: {e.msg} at character {e.pos}")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolError("malformed", 'a call is {"name": str, "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # not JSON: refused below
            arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        return ToolError("malformed", "arguments must be a JSON object")
    return ToolCall(call["name"], arguments)


def run_tool(tools: dict[str, Callable], call: ToolCall, timeout_s: float) -> str | ToolError:
    """The result of ``call`` as text, or the error it produced. The arguments are bound to the tool's
    signature first, so a ``TypeError`` inside the tool counts as ``raised``, not ``bad_arguments``. The time
    limit interrupts Python code in the main thread (:func:`rewards.calls.time_limit`); a tool that may hang
    inside C code belongs in the sandbox (the ``python`` tool)."""
    fn = tools.get(call.name)
    if fn is None:
        return ToolError("unknown_tool", f"no tool {call.name!r}; tools: {', '.join(sorted(tools))}")
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as e:
        return ToolError("bad_arguments", f"{call.name}: {e}")
    try:
        with time_limit(timeout_s):
            return str(fn(**call.arguments))
    except VerifierTimeout:
        return ToolError("timeout", f"{call.name} ran past {timeout_s} s")
    except Exception as e:  # a tool's failure is the model's observation, never the run's
        return ToolError("raised", "".join(traceback.format_exception_only(e)).strip())


class ToolEnvironment(Environment):
    """The model calls tools until it answers: a turn with tool calls gets one tool message per call (in
    order); a turn without is the final answer, and ends the episode. Rewards come from the recipe's
    verifiers on that answer. Options: ``tool_timeout_s`` (default 5)."""

    def step(self, turn: str) -> Reply:
        calls = parse_tool_calls(turn)
        if not calls:
            return Reply(done=True)
        timeout_s = float(self.options.get("tool_timeout_s", 5.0))
        results = [c if isinstance(c, ToolError) else run_tool(self.tools, c, timeout_s) for c in calls]
        messages = [
            {
                "role": "tool",
                "name": call.name if isinstance(call, ToolCall) else "",
                "content": f"error: {result.message}" if isinstance(result, ToolError) else result,
            }
            for call, result in zip(calls, results)
        ]
        errors = Counter(r.kind for r in results if isinstance(r, ToolError))
        return Reply(messages=messages, tool_calls=len(calls), tool_errors=dict(errors))


# ---------------------------------------------------------------- built-in tools

_OPERATORS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression.

    Args:
        expression: integers and decimals with + - * / and parentheses, e.g. 12*(3+4)
    """

    def value(node: ast.AST) -> int | float:  # ints stay exact
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    if len(expression) > 200:  # 9**9**9 is not allowed anyway; long inputs are not arithmetic a model needs
        raise ValueError("expression longer than 200 characters")
    result = value(ast.parse(expression, mode="eval").body)
    return str(int(result)) if float(result).is_integer() else repr(float(result))


def python(code: str) -> str:
    """Runs a Python program in a sandbox and returns what it printed.

    Args:
        code: the program; print what you want to see
    """
    from rewards.sandbox import run_program

    status, printed = run_program(code)
    return printed if status == 0 else f"{printed}\n(exit status {status})"


TOOLS: dict[str, Callable] = {"calculator": calculator, "python": python}


def resolve_tool(name: str) -> Callable:
    """A built-in tool by name, or a function by import path ``module:function``."""
    if name in TOOLS:
        return TOOLS[name]
    if ":" not in name:
        raise KeyError(f"unknown tool {name!r}; built in: {sorted(TOOLS)}, or an import path module:function")
    module, attr = name.rsplit(":", 1)
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise TypeError(f"tool {name} is not a function")
    return fn


class Calculator(ToolEnvironment):
    """Arithmetic with a ``calculator`` tool (the built-in ``builtin:multiplication`` task)."""

    default_tools: ClassVar[list[Callable]] = [calculator]
