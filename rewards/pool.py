"""A long-lived pool of verifier processes with per-sample deadlines enforced from outside.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop a task that hangs (say, inside one
C call that ignores the worker's own SIGALRM); that worker stays busy forever, and killing it breaks the
whole executor. Here each worker has its own socket, so the parent knows which sample each worker holds
and since when, kills only a worker that overruns its deadline, records a timeout for that sample and
starts a replacement. Workers are fresh interpreters (:mod:`rewards.worker`, started like 'spawn' with
fork+exec): safe in a process that has imported torch or started threads, which plain fork is not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait

from rewards.calls import Outcome, Task

GRACE_S = 2.0  # a worker gets this long after a task's own timeout before it is killed


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
        self.job: tuple[int, float] | None = None  # (task index, deadline) while busy

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

    def map(self, tasks: list[Task]) -> list[Outcome]:
        """Outcomes of ``tasks``, in order; a worker that dies or overruns gives that task a failure."""
        outcomes: list[Outcome | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        while pending or any(w.job for w in self.workers):
            for worker in self.workers:
                if worker.ready and worker.job is None and pending:
                    i = pending.popleft()
                    worker.conn.send(tasks[i])
                    worker.job = (i, time.monotonic() + tasks[i].timeout_s + GRACE_S)
            deadlines = [w.job[1] for w in self.workers if w.job]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for conn in wait([w.conn for w in self.workers], timeout):
                self._receive(next(w for w in self.workers if w.conn is conn), outcomes)
            for n, worker in enumerate(self.workers):
                if worker.job and time.monotonic() > worker.job[1]:
                    i = worker.job[0]
                    outcomes[i] = Outcome(None, "timeout", f"worker killed after {tasks[i].timeout_s + GRACE_S} s")
                    self._replace(n)
        return outcomes

    def _receive(self, worker: _Worker, outcomes: list) -> None:
        try:
            message = worker.conn.recv()
        except EOFError:  # the worker died (os._exit, segfault, OOM kill)
            if not worker.ready:
                raise RuntimeError(f"a verifier worker failed to start (exit code {worker.process.wait()}); "
                                   "see its traceback above") from None
            if worker.job:
                outcomes[worker.job[0]] = Outcome(None, "error", "verifier worker process died")
            self._replace(self.workers.index(worker))
            return
        if message == "ready":
            worker.ready = True
        else:
            outcomes[worker.job[0]] = message
            worker.job = None

    def _replace(self, n: int) -> None:
        self.workers[n].kill()
        self.workers[n] = _Worker(self.specs)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []
