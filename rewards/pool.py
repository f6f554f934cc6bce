"""A long-lived pool of verifier processes with per-sample deadlines enforced from outside.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop a task that hangs (say, inside one
C call that ignores the worker's own SIGALRM); that worker stays busy forever, and killing it breaks the
whole executor. Here each worker has its own socket, so the parent knows which sample each worker holds
and since when, kills only a worker that overruns its deadline, records a timeout for that sample and
starts a replacement. Workers are fresh interpreters (:mod:`rewards.worker`, started like 'spawn' with
fork+exec): safe in a process that has imported torch or started threads, which plain fork is not.
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

GRACE_S = 2.0    # a worker gets this long after a task's own timeout before it is killed
QUEUE_DEPTH = 4  # tasks sent ahead to each worker


class _Worker:
    def __init__(self, specs: list[tuple[str, dict]]):
        ours, theirs = socket.socketpair()
        # Same interpreter and import path as this process, so user verifiers resolve the same way there.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "rewards.worker", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(specs)
        self.ready = False
        self.jobs: deque[int] = deque()  # indices of the tasks sent, oldest (the one running) first
        self.deadline = math.inf         # for jobs[0]: it started when the previous outcome arrived

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
        self.workers = [_Worker(specs) for _ in range(workers)]
        self.tasks: list[Task] = []
        self.outcomes: list[Outcome | None] = []
        self.pending: deque[int] = deque()
        while not all(w.ready for w in self.workers):  # start-up errors surface here, not mid-training
            self._receive(None)

    def map(self, tasks: list[Task]) -> list[Outcome]:
        """Outcomes of ``tasks``, in order; a worker that dies or overruns gives its running task a failure."""
        self.tasks, self.outcomes, self.pending = tasks, [None] * len(tasks), deque(range(len(tasks)))
        while self.pending or any(w.jobs for w in self.workers):
            for worker in self.workers:
                # A few tasks queued ahead, so that a worker never waits for this (maybe busy) process.
                while worker.ready and len(worker.jobs) < QUEUE_DEPTH and self.pending:
                    i = self.pending.popleft()
                    worker.conn.send(tasks[i])
                    if not worker.jobs:
                        worker.deadline = time.monotonic() + tasks[i].timeout_s + GRACE_S
                    worker.jobs.append(i)
            self._receive(max(0.0, min(w.deadline for w in self.workers) - time.monotonic()))
            for n, worker in enumerate(self.workers):
                if worker.jobs and time.monotonic() > worker.deadline:
                    timeout = tasks[worker.jobs[0]].timeout_s + GRACE_S
                    self._fail(n, Outcome(None, "timeout", f"worker killed after {timeout} s"))
        return self.outcomes

    def _receive(self, timeout: float | None) -> None:
        for conn in wait([w.conn for w in self.workers], None if timeout == math.inf else timeout):
            n = next(n for n, w in enumerate(self.workers) if w.conn is conn)
            worker = self.workers[n]
            try:
                message = conn.recv()
            except EOFError:  # the worker died (os._exit, segfault, OOM kill)
                if not worker.ready:
                    raise RuntimeError(f"a verifier worker failed to start (exit code {worker.process.wait()}); "
                                       "see its traceback above") from None
                self._fail(n, Outcome(None, "error", "verifier worker process died"))
                continue
            if message == "ready":
                worker.ready = True
                continue
            self.outcomes[worker.jobs.popleft()] = message
            if worker.jobs:
                worker.deadline = time.monotonic() + self.tasks[worker.jobs[0]].timeout_s + GRACE_S
            else:
                worker.deadline = math.inf

    def _fail(self, n: int, outcome: Outcome) -> None:
        """Record ``outcome`` for worker ``n``'s running task, requeue the rest of its queue, replace it."""
        worker = self.workers[n]
        if worker.jobs:
            self.outcomes[worker.jobs.popleft()] = outcome
            self.pending.extendleft(reversed(worker.jobs))
        worker.kill()
        self.workers[n] = _Worker(self.specs)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []
