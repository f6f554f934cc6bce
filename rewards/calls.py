"""Calling one verifier on one sample: time limit, async support, result checking, failure capture."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import numbers
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

from rewards.registry import Verifier


@dataclass(frozen=True)
class Task:
    """One verifier applied to one sample (picklable: it travels to pool workers)."""

    spec: int  # index of the verifier in the scorer's spec list
    prompt: str
    completion: str
    row: dict  # this sample's dataset columns, one value each
    timeout_s: float


@dataclass(frozen=True)
class Outcome:
    score: float | None
    failure: str | None = None  # None, "error" or "timeout"
    message: str = ""


class VerifierTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise VerifierTimeout


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`VerifierTimeout` in the block once it has run ``seconds``: a SIGALRM timer, so it
    interrupts Python code (and sleeps) but only in the main thread; elsewhere the block runs unbounded.
    Code stuck inside one C call ignores the signal (the verifier pool kills such a worker from outside)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call(fn: Verifier, kwargs: dict, task: Task) -> Outcome:
    """``fn([prompt], [completion], **{column: [value]}, **kwargs)`` -> its single score, within the task's
    :func:`time_limit`."""
    try:
        with time_limit(task.timeout_s):
            result = fn([task.prompt], [task.completion], **{k: [v] for k, v in task.row.items()}, **kwargs)
            if inspect.iscoroutine(result):  # an async verifier
                result = asyncio.run(result)
        return Outcome(_single_score(result))
    except VerifierTimeout:
        return Outcome(None, "timeout", f"exceeded {task.timeout_s} s")
    except Exception as e:  # any bug or bad input in a verifier is that sample's failure, never the run's
        return Outcome(None, "error", "".join(traceback.format_exception_only(e)).strip())


def _single_score(result) -> float | None:
    if not isinstance(result, (list, tuple)) or len(result) != 1:
        raise TypeError(f"a verifier must return a list with one score per completion, got {result!r:.200}")
    score = result[0]
    if score is None:
        return None
    if not isinstance(score, numbers.Real) or not math.isfinite(score):
        raise TypeError(f"a score must be a finite number or None (abstain), got {score!r:.200}")
    return float(score)
