"""Tool calls: parsing the Hermes format, and every way a call can fail becoming a counted observation."""

import json
import time

import pytest

from rlkit.environments import Calculator, ToolCall, ToolEnvironment, ToolError, calculator, parse_tool_calls, run_tool
from rlkit.environments.tools import python
from tests.environments.chaos import fail, hang


def call_text(name, arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_calls_are_parsed_in_order_and_failures_are_named():
    text = (
        call_text("calculator", {"expression": "2*3"})
        + "some words"
        + '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"4+4\\"}"}</tool_call>'
        + "<tool_call>{not json}</tool_call>"
        + '<tool_call>{"arguments": {}}</tool_call>'
        + '<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>'
        + '<tool_call>{"name": "calculator"'
    )
    calls = parse_tool_calls(text)
    assert calls[:2] == [ToolCall("calculator", {"expression": "2*3"}), ToolCall("calculator", {"expression": "4+4"})]
    assert [c.kind for c in calls[2:]] == ["malformed"] * 4
    assert "not JSON" in calls[2].message and "unclosed" in calls[5].message
    assert parse_tool_calls("1665") == []


TOOLS = {"calculator": calculator, "hang": hang, "fail": fail}


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (ToolCall("search", {}), "unknown_tool"),
        (ToolCall("calculator", {"expr": "1"}), "bad_arguments"),
        (ToolCall("calculator", {"expression": "1", "extra": 2}), "bad_arguments"),
        (ToolCall("calculator", {"expression": "2**99999"}), "raised"),  # not arithmetic the tool allows
        (ToolCall("calculator", {"expression": "1/0"}), "raised"),
        (ToolCall("fail", {"x": 1}), "raised"),  # a TypeError inside the tool is not a bad argument
        (ToolCall("hang", {"seconds": 30}), "timeout"),
    ],
)
def test_each_failure_is_an_error_of_its_kind(call, kind):
    started = time.monotonic()
    result = run_tool(TOOLS, call, timeout_s=0.5)
    assert isinstance(result, ToolError) and result.kind == kind, result
    assert time.monotonic() - started < 20  # a hang guard, not a timing assert: the 30 s sleep was cut


def test_a_good_call_returns_the_result_as_text():
    assert run_tool(TOOLS, ToolCall("calculator", {"expression": "37*45"}), 1.0) == "1665"
    assert run_tool(TOOLS, ToolCall("hang", {"seconds": 0}), 1.0) == "late"


def test_calculator_is_exact_and_refuses_what_is_not_arithmetic():
    assert calculator("37*45") == "1665" and calculator("12*(3+4)") == "84" and calculator("7/2") == "3.5"
    assert calculator("123456789*987654321") == str(123456789 * 987654321)  # integers stay exact
    for bad in ["2**10", "__import__('os')", "True+1", "x", "[1]"]:
        with pytest.raises(ValueError, match="not arithmetic"):
            calculator(bad)


def test_the_environment_answers_every_call_and_ends_on_a_turn_without_one():
    env = ToolEnvironment({"prompt": "?"}, [calculator, hang], {"tool_timeout_s": 0.5})
    turn = call_text("calculator", {"expression": "6*7"}) + call_text("nope", {}) + call_text("hang", {"seconds": 9})
    reply = env.step(turn)
    assert not reply.done and reply.tool_calls == 3
    assert reply.tool_errors == {"unknown_tool": 1, "timeout": 1}
    assert [m["role"] for m in reply.messages] == ["tool"] * 3
    assert reply.messages[0]["content"] == "42" and reply.messages[1]["content"].startswith("error: no tool 'nope'")
    final = env.step("42")
    assert final.done and final.messages == [] and final.tool_calls == 0
    assert Calculator.default_tools == [calculator]


def test_the_python_tool_runs_in_the_sandbox():
    assert python("print(6 * 7)").strip() == "42"
    assert "exit status 1" in python("raise SystemExit(1)")


def test_verify_scores_an_episode_by_its_final_turn(tmp_path):
    from rewards.offline import read_completions
    from rlkit.environments import shown_completion

    episode = [
        {"role": "assistant", "content": call_text("calculator", {"expression": "6*7"})},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "42"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"prompt": "6*7=", "episode": episode, "answer": "42"}) + "\n")
    prompts, completions, columns, _ = read_completions(path)
    assert (prompts, completions, columns) == (["6*7="], ["42"], {"answer": ["42"]})
    shown = shown_completion({"completion": "42", "episode": episode})
    assert shown == f"[assistant] {call_text('calculator', {'expression': '6*7'})} [tool] 42 [assistant] 42"
    assert shown_completion({"completion": "42"}) == "42"
