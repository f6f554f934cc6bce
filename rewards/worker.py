"""A verifier worker process: ``python -m rewards.worker FD``, talking to :mod:`rewards.pool` over socket FD.

It is a fresh interpreter that imports only rlkit's rewards (unlike multiprocessing's spawn, which
re-imports the parent's main module, i.e. the trainer and torch, in every worker).
"""

import sys
from multiprocessing.connection import Connection

from rewards.calls import call
from rewards.registry import get_verifier


def serve(conn: Connection) -> None:
    """Receive the specs, resolve the verifiers once, say so, then answer tasks until the socket closes."""
    functions = [(get_verifier(name), kwargs) for name, kwargs in conn.recv()]
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        fn, kwargs = functions[task.spec]
        conn.send(call(fn, kwargs, task))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
