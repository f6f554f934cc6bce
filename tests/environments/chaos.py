"""A user environment (chosen by import path) whose every turn makes each kind of bad tool call."""

import time

from rlkit.environments import ToolEnvironment


def hang(seconds: int) -> str:
    """Sleeps past any time limit.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "late"


def fail(x: int) -> str:
    """Raises a TypeError of its own (not one of binding its arguments).

    Args:
        x: anything
    """
    return "a" + x  # type: ignore[operator]


BAD_CALLS = (
    "<tool_call>{oops</tool_call>"
    '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    '<tool_call>{"name": "fail", "arguments": {"y": 1}}</tool_call>'
    '<tool_call>{"name": "fail", "arguments": {"x": 1}}</tool_call>'
    '<tool_call>{"name": "hang", "arguments": {"seconds": 60}}</tool_call>'
)


class Chaos(ToolEnvironment):
    default_tools = [hang, fail]

    def step(self, turn):
        first = not getattr(self, "called", False)
        self.called = True
        return super().step(turn + BAD_CALLS) if first else super().step("")  # then the turn is the answer
