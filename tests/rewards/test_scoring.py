"""RewardScorer: weights, abstention, routing, failures and timeouts, in-process and in a worker pool.

The verifiers below are loaded by file path ("tests/rewards/test_scoring.py:name"), as a user's would be.
"""

import math
import os
import signal
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from rewards import RewardScorer, RewardSpec

HERE = Path(__file__)


def by_length(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def digits_only(prompts, completions, **_):
    return [1.0 if c.isdigit() else None for c in completions]


async def async_echo(prompts, completions, value, **_):
    return [float(v) for v in value]


def crash_on_x(prompts, completions, **_):
    if completions[0] == "x":
        raise ValueError("boom")
    return [1.0]


def sleep_for(prompts, completions, seconds, **_):
    time.sleep(float(seconds[0]))
    return [1.0]


def deaf_sleep(prompts, completions, **_):
    """Stands for code stuck in one C call: it never sees the worker's SIGALRM."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)
    return [1.0]


def meet(prompts, completions, group_size, folder, **_):
    """Returns once ``group_size`` samples have been in here (each leaves its completion as a file in
    ``folder``): only samples scored at the same time all succeed."""
    Path(folder, completions[0]).touch()
    while len(list(Path(folder).iterdir())) < group_size[0]:
        time.sleep(0.01)
    return [1.0]


def die(prompts, completions, **_):
    os._exit(3)


def wrong_count(prompts, completions, **_):
    return [1.0, 2.0]


def spec(name, **fields):
    return RewardSpec(verifier=f"{HERE}:{name}", name=name, **fields)


def test_weighted_total_abstention_and_metrics():
    specs = [spec("by_length", weight=0.5), spec("digits_only", weight=2.0)]
    with RewardScorer(specs) as scorer:
        scores = scorer(["p"] * 3, ["12", "abc", "7"], {})
    assert scores.per_verifier == {"by_length": [2.0, 3.0, 1.0], "digits_only": [1.0, None, 1.0]}
    assert scores.total == [0.5 * 2 + 2 * 1, 0.5 * 3, 0.5 * 1 + 2 * 1]
    assert scores.metrics == {
        "reward/by_length/mean": 2.0,
        "reward/by_length/failures": 0.0,
        "reward/by_length/timeouts": 0.0,
        "reward/digits_only/mean": 1.0,
        "reward/digits_only/failures": 0.0,
        "reward/digits_only/timeouts": 0.0,
    }
    assert scores.failures == []


def test_metric_keys_name_the_verifier_not_its_file():
    """A file verifier is labelled by its function; labels that collide are numbered by entry (0, 1, 2)."""
    specs = [RewardSpec(verifier=f"{HERE}:by_length"), RewardSpec(verifier="math")]
    assert [s.label for s in RewardScorer(specs).specs] == ["by_length", "math"]
    twice = [
        RewardSpec(verifier=f"{HERE}:by_length"),
        RewardSpec(verifier=f"{HERE}:by_length", weight=2.0),
        RewardSpec(verifier=f"{HERE}:digits_only", name="by_length"),
    ]
    scores = RewardScorer(twice)(["p"], ["12"], {})
    assert scores.per_verifier == {"by_length_0": [2.0], "by_length_1": [2.0], "by_length": [1.0]}
    assert sorted(scores.metrics) == [
        f"reward/{label}/{key}"
        for label in ("by_length", "by_length_0", "by_length_1")
        for key in ("failures", "mean", "timeouts")
    ]


def test_all_abstaining_gives_nan():
    scores = RewardScorer([spec("digits_only")])(["p"], ["abc"], {})
    assert math.isnan(scores.total[0]) and math.isnan(scores.metrics["reward/digits_only/mean"])


def test_routing_by_dataset_column():
    specs = [spec("by_length", when={"task": "text"}), spec("async_echo", when={"task": ["math", "mc"]})]
    scores = RewardScorer(specs)(["p"] * 3, ["ab", "abc", "abcd"], {"task": ["text", "math", "mc"], "value": [5, 6, 7]})
    assert scores.per_verifier == {"by_length": [2.0, None, None], "async_echo": [None, 6.0, 7.0]}
    assert scores.total == [2.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="routes on column 'kind', which the dataset lacks"):
        RewardScorer([spec("by_length", when={"kind": "x"})])(["p"], ["a"], {"task": ["t"]})


def test_failures_are_recorded_not_raised():
    specs = [spec("crash_on_x"), spec("sleep_for", timeout_s=0.2, on_failure=None)]
    scores = RewardScorer(specs)(["p"] * 2, ["x", "y"], {"seconds": [0, 5]})
    assert scores.per_verifier == {"crash_on_x": [0.0, 1.0], "sleep_for": [1.0, None]}
    assert scores.total == [1.0, 1.0]
    assert [(f.label, f.index, f.kind) for f in scores.failures] == [
        ("crash_on_x", 0, "error"),
        ("sleep_for", 1, "timeout"),
    ]
    assert scores.failures[0].message == "ValueError: boom"
    assert scores.metrics["reward/crash_on_x/failures"] == 1.0 and scores.metrics["reward/sleep_for/timeouts"] == 1.0
    assert scores.metrics["reward/crash_on_x/mean"] == 0.5 and scores.metrics["reward/sleep_for/mean"] == 1.0


def test_bad_return_value_is_a_failure():
    scores = RewardScorer([spec("wrong_count")])(["p"], ["a"], {})
    assert scores.failures[0].message.startswith("TypeError: a verifier must return a list with one score")


def test_bad_batch_and_specs_are_rejected_clearly():
    with pytest.raises(ValueError, match="dataset column 'answer' has 1 values for 2 completions"):
        RewardScorer([spec("by_length")])(["p", "q"], ["a", "b"], {"answer": [1]})
    with pytest.raises(ValueError, match="labels must be unique"):
        RewardScorer([spec("by_length"), spec("by_length")])
    with pytest.raises(ValidationError, match="timeout"):
        RewardSpec(verifier="math", timeout=3)
    with pytest.raises(KeyError, match="unknown verifier 'nope'"):
        RewardScorer([RewardSpec(verifier="nope")])


def test_builtin_math_in_a_recipe_entry():
    scores = RewardScorer([RewardSpec(verifier="math"), RewardSpec(verifier="think_format", weight=0.1)])(
        ["p"] * 2, ["<think>x</think><answer>\\frac{1}{2}</answer>", "0.3"], {"answer": ["0.5", "0.5"]}
    )
    assert scores.total == pytest.approx([1.1, 0.0])


@pytest.fixture(scope="module")
def pooled():
    specs = [
        spec("by_length"),
        spec("async_echo"),
        spec("crash_on_x"),
        spec("sleep_for", timeout_s=0.3),
        spec("deaf_sleep", timeout_s=0.1, when={"hang": "yes"}),
        spec("die", when={"die": "yes"}),
    ]
    with RewardScorer(specs, workers=2) as scorer:
        yield scorer


def test_pool_matches_in_process_scoring(pooled):
    batch = (
        ["p"] * 3,
        ["ab", "x", "abcd"],
        {"value": [1, 2, 3], "seconds": [0, 0, 5], "hang": ["no"] * 3, "die": ["no"] * 3},
    )
    scores = pooled(*batch)
    assert scores.per_verifier["by_length"] == [2.0, 1.0, 4.0]
    assert scores.per_verifier["async_echo"] == [1.0, 2.0, 3.0]
    assert scores.per_verifier["crash_on_x"] == [1.0, 0.0, 1.0]
    assert scores.per_verifier["sleep_for"] == [1.0, 1.0, 0.0]
    assert scores.total == [5.0, 4.0, 8.0]
    assert [(f.label, f.index, f.kind) for f in scores.failures] == [
        ("crash_on_x", 1, "error"),
        ("sleep_for", 2, "timeout"),
    ]
    in_process = RewardScorer(pooled.specs)(*batch)  # the routed-out hang and die are never called
    assert (in_process.per_verifier, in_process.total, in_process.failures) == (
        scores.per_verifier,
        scores.total,
        scores.failures,
    )


def test_pool_survives_a_stuck_and_a_dead_worker(pooled):
    """deaf_sleep ignores its alarm for 60 s: the pool kills its worker (the message says when), and the
    others score on; the next batch finds the pool whole."""
    scores = pooled(
        ["p"] * 2, ["ab", "abc"], {"value": [1, 1], "seconds": [0, 0], "hang": ["yes", "no"], "die": ["no", "yes"]}
    )
    assert [(f.label, f.index, f.kind, f.message) for f in scores.failures] == [
        ("deaf_sleep", 0, "timeout", "worker killed after 2.1 s"),
        ("die", 1, "error", "verifier worker process died"),
    ]
    assert scores.total == [2.0 + 1 + 1 + 1 + 0, 3.0 + 1 + 1 + 1 + 0]
    again = pooled(["p"], ["ab"], {"value": [1], "seconds": [0], "hang": ["no"], "die": ["no"]})
    assert again.total == [5.0] and again.failures == []


def test_slow_samples_overlap_instead_of_queueing(tmp_path):
    """Three samples that only finish together, and two that time out, on two workers: one running
    sample per worker would time out the first two meeting ones, each after the other (their 60 s limit:
    generous, as the workers started for the set-aside samples import Python afresh on a busy machine),
    and queue the third behind them. Slow samples are left to run beside the rest instead, so all three
    meet; the two that hang still time out, are scored on_failure and counted."""
    specs = [
        spec("meet", timeout_s=60, kwargs={"folder": str(tmp_path)}, when={"kind": "meet"}),
        spec("sleep_for", timeout_s=1, when={"kind": "hang"}),
    ]
    with RewardScorer(specs, workers=2) as scorer:
        scores = scorer(
            ["p"] * 5,
            ["h0", "h1", "m2", "m3", "m4"],
            {"kind": ["hang", "hang", "meet", "meet", "meet"], "group_size": [3] * 5, "seconds": [60] * 5},
        )
        assert len(scorer.pool.workers) == 2  # the set-aside workers were stopped with their sample
    assert scores.per_verifier == {"meet": [None, None, 1.0, 1.0, 1.0], "sleep_for": [0.0, 0.0, None, None, None]}
    assert [(f.label, f.index, f.kind) for f in scores.failures] == [
        ("sleep_for", 0, "timeout"),
        ("sleep_for", 1, "timeout"),
    ]
    assert scores.metrics["reward/sleep_for/timeouts"] == 2.0 and scores.metrics["reward/meet/timeouts"] == 0.0
