"""The start of one test's process: a fresh interpreter that runs the model's code and holds nothing else.

Standard library only, and never imported by rlkit: :mod:`rewards._sandbox_runner` starts it as
``python3 -I -c <this source>``, already as ``nobody`` (when root) and under the test's limits, with three
descriptors only. Stdin is a throw-away memory file: a 10-digit length, a JSON header ``{"code": ...}``
(with ``"assert"`` and ``"status"`` for an assert test), then the test's input. Stdout is another one, and
it is only data: the caller compares it with the expected output, which never enters the sandbox.
Stderr is /dev/null.

An assert test has to run in the solution's namespace, so in this very process, and the only verdict it
can give is this process's exit status: ``status``, a number the caller drew at random for this test,
given once the test ran without an exception. An early ``os._exit(0)`` or ``sys.exit()`` does not give
it. Code that digs through its own interpreter can find that number, as it can always cheat an assert
from inside (say with an ``__eq__`` that is always true): an assert test is worth what a test run inside
the program can be. Stdin/stdout tests are judged entirely outside.
"""

import json
import os
import sys


def block_network(event, args):
    """Audit hook: a Python-level network guard, the only one where network namespaces are unavailable.
    Code that starts another program or uses ctypes gets past it; the namespace does not have that hole."""
    if event.startswith("socket."):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")


job = json.loads(os.read(0, int(os.read(0, 10))))  # raw reads: the input, after the header, stays unread
sys.addaudithook(block_network)
namespace = {"__name__": "__main__"}
if "assert" not in job:
    exec(compile(job["code"], "solution.py", "exec"), namespace)  # exit status 0, or whatever the program says
else:
    devnull = os.open(os.devnull, os.O_RDONLY)  # stdin held the header, and so the pass status
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        exec(compile(job["code"], "solution.py", "exec"), namespace)
        exec(compile(job["assert"], "test.py", "exec"), namespace)
    except BaseException:  # SystemExit included: the test failed, or never ran
        os._exit(1)
    os._exit(job["status"])
