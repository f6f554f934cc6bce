"""Peak memory of one computation above what the process held before it (for the memory benchmarks)."""

from __future__ import annotations

import resource
from contextlib import contextmanager

import torch


def rss_bytes() -> int:
    """The current resident set of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@contextmanager
def peak_above_start(device: str):
    """Yields a dict whose ``"mib"`` is set on exit: ``torch.cuda.max_memory_allocated`` growth on a GPU, the
    growth of the peak resident set (``ru_maxrss``) on a CPU, where torch's allocator returns large blocks
    to the system, so the resident set follows the tensors. Run it once per fresh process on a CPU: the
    peak resident set never goes down."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    result = {}
    yield result
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    result["mib"] = peak / 2**20
