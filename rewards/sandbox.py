"""Run model-written Python against test cases without letting it touch the machine.

One sample = one sandbox process, ``python3 -I`` running :mod:`rewards._sandbox_runner`, which runs
each test in a fresh interpreter of its own (:mod:`rewards._sandbox_child`). The layers, and what each
one guarantees:

- **Verdicts from outside**: expected outputs never enter the sandbox. The runner reports what each
  test did (its exit status; its stdout, for a stdin/stdout test) and this module judges. The model's
  code shares no memory, descriptor (only stdin, stdout and stderr are open) or file name with the
  runner, so it can neither forge the report nor read what it will be compared with. An assert test
  runs in the program's own process, so its verdict is that process's exit status: one drawn at random
  per test, which code digging through its own interpreter can find (see the child's docstring).
- **Namespaces** (when ``unshare --net --pid --mount --ipc`` works, i.e. as root or with user
  namespaces allowed; checked once per process): no network at all (a fresh network namespace has
  only a down loopback); a private pid namespace whose init is the runner, so model code cannot
  signal anything outside it and every process it started dies with it, even one that called
  ``setsid``; every host mount read-only (Linux 5.12 or later), and private tmpfs mounts on /tmp,
  /var/tmp, /dev/shm and /run, capped in size and inodes, the only places it can write, so files it
  writes never reach the host and their total is bounded (and the sockets of the host's daemons, in
  /run, are out of reach); a private IPC namespace, so System V shared memory, message queues and
  semaphores, and POSIX message queues, die with the sandbox, within limits it sets (shared memory up
  to ``disk_mb`` in all). Without namespaces (a warning is logged once) the code runs in a temporary
  directory with only the Python-level network guard below; it can write to the host's
  world-writable directories, create System V objects that outlive it, and a process that calls
  ``setsid`` escapes the final kill.
- **User**: when we are root, the runner stays root and each test runs as ``nobody``, so model code
  cannot write, delete or kill anything owned by another user, the runner included. Otherwise it runs
  as the calling user, and can touch that user's files and kill the runner (the sample then fails),
  or read and change this process's memory: without root, verdicts can be forged. Either way it runs
  with ``no_new_privs``, so setuid programs give it nothing.
- **rlimits** per test (``resource``): address space, CPU seconds, file size (which also caps captured
  output: stdout goes to a file in memory), open files, processes (RLIMIT_NPROC counts all processes
  of the user, ``nobody`` here, so it is shared by sandboxes running at the same time; root ignores
  it), and no core dumps. The interpreter's start-up counts against each test's time and CPU limits.
- **Wall clock**: the runner kills each test's process group (and, in its namespace, everything but
  itself) at ``timeout_s``; this module kills the whole sandbox process group (``start_new_session``)
  when the total budget runs out, or when the caller is interrupted (e.g. by a verifier timeout).
- **Clean environment**: only ``PATH`` and ``LANG`` are passed, so no secrets are inherited;
  ``-I`` makes Python ignore ``PYTHON*`` variables and the user site directory.
- **Python-level network guard**: an audit hook refusing every ``socket.*`` event; anything that
  starts another program or uses ctypes gets past it, so alone it is a speed bump, not a wall.

Not covered: memory is limited per process, not per sandbox (a fork bomb of memory bombs can use
``processes x memory_mb``, and memory files of up to ``output_bytes`` and pipes, outside any
address space, in as many as ``processes x open_files`` descriptors); cgroups would be needed for that. A unix socket
outside /run, open to all, can still be connected to (read-only mounts do not stop ``connect``). A
crash reaches a ``kernel.core_pattern`` that pipes core dumps to a host program (the rlimit only
stops core files).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RUNNER = (Path(__file__).with_name("_sandbox_runner.py")).read_text()
CHILD = (Path(__file__).with_name("_sandbox_child.py")).read_text()
# Exit statuses an assert test's process may be told to pass with: not 0 (a normal or early exit),
# 1 (an exception) or 2 (Python's usage error).
PASS_STATUSES = range(3, 256)
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
NAMESPACES = ["unshare", "--net", "--pid", "--mount-proc", "--ipc", "--fork", "--kill-child"]
STARTUP_S = 5.0  # budget for starting the sandbox, on top of the tests' own timeouts


@dataclass(frozen=True)
class Limits:
    """Resource limits of one test of a sandboxed sample."""

    timeout_s: float = 2.0  # wall clock per test
    cpu_s: float = 2.0  # CPU seconds per process (RLIMIT_CPU, whole seconds, at least 1)
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    output_bytes: int = 1 << 20  # largest file it may write, stdout and stderr included (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # RLIMIT_NPROC, per user
    disk_mb: int = 64  # size of each private tmpfs, and of all System V shared memory (namespaces only)


@functools.cache
def namespaces_available() -> bool:
    """Whether this process may create network, pid and mount namespaces (checked once)."""
    try:
        ok = subprocess.run([*NAMESPACES, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        log.warning(
            "code sandbox: cannot create namespaces (not root?); model code runs as this user "
            "with rlimits and a Python-level network guard only"
        )
    return ok


def run_tests(code: str, tests: list[dict], limits: Limits = Limits(), python: str = "python3") -> list[bool]:
    """Run ``code`` against each test and return which passed.

    A test is ``{"assert": "assert f(2) == 4"}`` (Python run after the solution, in its namespace) or
    ``{"input": "2\\n", "output": "4\\n"}`` (the solution as a program reading stdin; output compared
    ignoring trailing whitespace). Raises ``TimeoutError`` if the sandbox exceeds its total budget and
    ``RuntimeError`` if it fails to report, e.g. when ``python`` is one that the tests cannot start:
    each runs it afresh, as ``nobody`` when we are root, after /tmp, /var/tmp, /dev/shm and /run were
    replaced by private folders (so not a virtual environment under /root or /tmp).
    """
    for test in tests:
        if not (set(test) == {"assert"} or set(test) == {"input", "output"}):
            raise ValueError(f"a test is {{'assert': str}} or {{'input': str, 'output': str}}, got keys {sorted(test)}")
    # What enters the sandbox: inputs and assert tests, never an expected output.
    jobs = [
        {"input": t["input"]} if "input" in t else {"assert": t["assert"], "status": secrets.choice(PASS_STATUSES)}
        for t in tests
    ]
    results = _run_jobs(code, jobs, limits, python)
    return [
        result["exit"] == job["status"]
        if "assert" in job
        else result["exit"] == 0 and same_output(result["stdout"], test["output"])
        for test, job, result in zip(tests, jobs, results, strict=True)
    ]


def run_program(code: str, stdin: str = "", limits: Limits = Limits(), python: str = "python3") -> tuple[int, str]:
    """Run ``code`` as a program reading ``stdin`` in the sandbox: (exit status, what it printed, cut to
    ``limits.output_bytes``). Raises as :func:`run_tests`."""
    result = _run_jobs(code, [{"input": stdin}], limits, python)[0]
    return result["exit"], result["stdout"]


def _run_jobs(code: str, jobs: list[dict], limits: Limits, python: str) -> list[dict]:
    """The runner's report of each job (``{"exit": int, "stdout": str}``), one sandbox process for all."""
    isolate = namespaces_available()
    request = json.dumps({"child": CHILD, "code": code, "tests": jobs, "limits": asdict(limits), "isolate": isolate})
    command = [*(NAMESPACES if isolate else []), python, "-I", "-c", RUNNER]
    budget = STARTUP_S + limits.timeout_s * len(jobs)
    with tempfile.TemporaryDirectory(prefix="rlkit-sandbox-") as workdir:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=CLEAN_ENV,
            start_new_session=True,
            text=True,
        )
        try:
            out, err = proc.communicate(request, timeout=budget)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"sandbox did not finish {len(jobs)} tests in {budget:.0f} s") from None
        finally:  # also when the caller is interrupted: nothing may outlive this call
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        return json.loads(out)["results"]
    except (ValueError, KeyError):
        raise RuntimeError(f"sandbox runner failed (exit {proc.returncode}): {err[-2000:]}") from None


def same_output(produced: str, expected: str) -> bool:
    """Compare program output ignoring trailing whitespace on each line and trailing blank lines
    (the usual rule of APPS / CodeContests judges)."""

    def lines(text):
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return lines(produced) == lines(expected)
