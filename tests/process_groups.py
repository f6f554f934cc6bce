"""Ending a test's own gloo worker the way rlkit's ranks end (``rlkit/cli.py``)."""

import os
import sys

import torch.distributed as dist


def leave() -> None:
    """Wait for every rank, destroy the group and exit at once, skipping interpreter finalization.

    A gloo group freed during finalization can abort the process with "terminate called without an
    active exception" (pytorch/pytorch#190489: its destructor joins worker threads that wait for the
    GIL), and ``mp.spawn`` then reports a test that passed as a worker killed by SIGABRT. The barrier
    keeps either rank from tearing gloo down while the other still talks to it.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
