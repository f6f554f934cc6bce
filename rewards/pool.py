"""A long-lived pool of verifier processes with per-sample deadlines enforced from outside.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop a task that hangs (say, inside one
C call that ignores the worker's own SIGALRM); that worker stays busy forever, and killing it breaks the
whole executor. Here each worker has its own socket, so the parent knows which sample each worker holds
and since when, kills only a worker that overruns its deadline, records a timeout for that sample and
starts a replacement. Workers are fresh interpreters (:mod:`rewards.worker`, started like 'spawn' with
fork+exec): safe in a process that has imported torch or started threads, which plain fork is not.

A worker runs one sample at a time, so samples that time out would each hold a worker for their whole
time limit, one after another (and those queued behind them would wait too). Instead, a sample still
running after a tenth of its limit (rare for one that will succeed: a limit is set well above the usual
time) is left to finish alone: its worker is set aside, its queue goes back to the others and a fresh
worker takes its place. So slow samples overlap (up to ``MAX_ASIDE`` set aside per worker), each hung
one starting about a tenth of a time limit after the one before it on a worker, where it used to start
a whole limit later. A set-aside worker is stopped as soon as that sample's outcome is in.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait

from rewards.calls import Outcome, Task

GRACE_S = 2.0  # a worker gets this long after a task's own timeout before it is killed
QUEUE_DEPTH = 4  # tasks sent ahead to each worker
PATIENCE = 0.1  # fraction of its timeout after which a running task no longer holds its worker's queue
MAX_ASIDE = 4  # set-aside workers per worker: bounds the processes (and memory) slow samples take


class _Worker:
    def __init__(self, specs: list[tuple[str, dict]]):
        ours, theirs = socket.socketpair()
        # Same interpreter and import path as this process, so user verifiers resolve the same way there.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rewards.worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(specs)
        self.ready = False
        self.jobs: deque[int] = deque()  # indices of the tasks sent, oldest (the one running) first
        self.started = math.inf  # when jobs[0] started: when it was sent or the previous outcome arrived
        self.aside = False  # set aside: it only finishes jobs[0], then it is stopped

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.conn.close()


class VerifierPool:
    """``workers`` processes that each hold every verifier of a recipe (``specs``: (verifier, kwargs))."""

    def __init__(self, specs: list[tuple[str, dict]], workers: int):
        if workers < 1:
            raise ValueError(f"a verifier pool needs at least one worker, got {workers}")
        self.specs = specs
        self.size = workers
        self.workers = [_Worker(specs) for _ in range(workers)]
        self.tasks: list[Task] = []
        self.outcomes: dict[int, Outcome] = {}  # task index -> its outcome, as they arrive
        self.pending: deque[int] = deque()
        while not all(w.ready for w in self.workers):  # start-up errors surface here, not mid-training
            self._receive(None)

    def map(self, tasks: list[Task]) -> list[Outcome]:
        """Outcomes of ``tasks``, in order; a worker that dies or overruns gives its running task a failure."""
        self.tasks, self.outcomes, self.pending = tasks, {}, deque(range(len(tasks)))
        while self.pending or any(w.jobs for w in self.workers):
            for worker in self.workers:
                # A few tasks queued ahead, so that a worker never waits for this (maybe busy) process.
                while worker.ready and not worker.aside and len(worker.jobs) < QUEUE_DEPTH and self.pending:
                    i = self.pending.popleft()
                    worker.conn.send(tasks[i])
                    if not worker.jobs:
                        worker.started = time.monotonic()
                    worker.jobs.append(i)
            self._receive(max(0.0, min(self._next_event(w) for w in self.workers) - time.monotonic()))
            for worker in list(self.workers):
                if worker.jobs and time.monotonic() > self._deadline(worker):
                    timeout = tasks[worker.jobs[0]].timeout_s + GRACE_S
                    self._fail(worker, Outcome(None, "timeout", f"worker killed after {timeout} s"))
                elif time.monotonic() > self._patience_ends(worker):
                    self._set_aside(worker)
        return [self.outcomes[i] for i in range(len(tasks))]

    def _deadline(self, worker: _Worker) -> float:
        """When ``worker`` is killed if its running task has not answered."""
        return worker.started + self.tasks[worker.jobs[0]].timeout_s + GRACE_S if worker.jobs else math.inf

    def _patience_ends(self, worker: _Worker) -> float:
        """When ``worker`` is set aside if its running task has not answered: never when that would not let
        another task start sooner (nothing waits), or when the set-aside workers are at their bound."""
        waiting = len(worker.jobs) > 1 or self.pending
        room = sum(w.aside for w in self.workers) < MAX_ASIDE * self.size
        if worker.aside or not (worker.jobs and waiting and room):
            return math.inf
        return worker.started + self.tasks[worker.jobs[0]].timeout_s * PATIENCE

    def _next_event(self, worker: _Worker) -> float:
        return min(self._deadline(worker), self._patience_ends(worker))

    def _receive(self, timeout: float | None) -> None:
        ready = wait([w.conn for w in self.workers], None if timeout == math.inf else timeout)
        for worker in [w for w in self.workers if w.conn in ready]:
            try:
                message = worker.conn.recv()
            except EOFError:  # the worker died (os._exit, segfault, OOM kill)
                if not worker.ready:
                    raise RuntimeError(
                        f"a verifier worker failed to start (exit code {worker.process.wait()}); "
                        "see its traceback above"
                    ) from None
                self._fail(worker, Outcome(None, "error", "verifier worker process died"))
                continue
            if message == "ready":
                worker.ready = True
                continue
            self.outcomes[worker.jobs.popleft()] = message
            worker.started = time.monotonic()
            if worker.aside:  # its one task is done; what it still holds was handed to the others
                worker.kill()
                self.workers.remove(worker)

    def _set_aside(self, worker: _Worker) -> None:
        """Leave ``worker`` alone with its running task: its queue goes back, a fresh worker takes its place."""
        worker.aside = True
        while len(worker.jobs) > 1:
            self.pending.appendleft(worker.jobs.pop())
        self.workers.append(_Worker(self.specs))

    def _fail(self, worker: _Worker, outcome: Outcome) -> None:
        """Record ``outcome`` for ``worker``'s running task, requeue the rest of its queue, replace it (a
        set-aside worker was replaced already)."""
        if worker.jobs:
            self.outcomes[worker.jobs.popleft()] = outcome
            self.pending.extendleft(reversed(worker.jobs))
        worker.kill()
        self.workers.remove(worker)
        if not worker.aside:
            self.workers.append(_Worker(self.specs))

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []
