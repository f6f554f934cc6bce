"""The few collectives rlkit needs, as no-ops when only one process runs.

Objectives compute loss normalisers (token counts, sequence counts, selection thresholds) over the whole
optimizer step *and all ranks*; these helpers are how. They work on any initialised
``torch.distributed`` group (gloo on CPU, nccl on GPU), which is what ``accelerate launch`` sets up.
Results come back on the input's device. NCCL only moves CUDA tensors, so under NCCL a host tensor (a
count made from Python numbers) travels through the current GPU; everything else stays where it is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over ranks (a new tensor; ``t`` is left alone)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over ranks."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def _wire_device(t: torch.Tensor) -> torch.device:
    """The device a collective on ``t`` runs on: ``t``'s own, except a host tensor under NCCL."""
    if t.device.type == "cpu" and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if world_size() == 1:
        return t.detach().clone()
    out = t.detach().to(_wire_device(t), copy=True)
    dist.all_reduce(out, op=op)
    return out.to(t.device)


def all_gather_rows(t: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Concatenate every rank's ``t`` along dim 0 (ranks may hold different row counts; other dims equal).

    Returns the concatenation (rank order, on ``t``'s device) and the slice of it that is this rank's own
    rows, so a rule computed on the gathered tensor can be cut back to the local rows.
    """
    if world_size() == 1:
        return t, slice(0, t.shape[0])
    wire = _wire_device(t)
    gathered = [torch.zeros(1, dtype=torch.long, device=wire) for _ in range(world_size())]
    dist.all_gather(gathered, torch.tensor([t.shape[0]], dtype=torch.long, device=wire))
    counts = [int(c) for c in gathered]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=wire)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    start = sum(counts[: dist.get_rank()])
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(t.device), slice(start, start + t.shape[0])


_GLOO_TIMEOUTS = ("Timed out waiting", "Application timeout caused pair closure")


def collective_timed_out(error: RuntimeError) -> bool:
    """Whether ``error`` is gloo's report of a collective that outlived the process group's timeout (a
    plain RuntimeError). The operation that timed out raises "Timed out waiting Nms for recv operation to
    complete"; gloo then closes every pair of the context, so an operation in flight beside it (DDP runs
    its gradient buckets' all-reduces concurrently) and every later one raise "Application timeout caused
    pair closure", and either can reach Python first. NCCL's watchdog aborts the process itself, with its
    own message."""
    return any(words in str(error) for words in _GLOO_TIMEOUTS)


_GLOO_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_lost(error: RuntimeError) -> bool:
    """Whether ``error`` is gloo's report that another rank's end of a connection went away: the rank was
    killed or crashed, and its operating system closed its sockets. A read then sees the end of the stream
    ("Connection closed by peer") or a reset ("Read error ...: Connection reset by peer"), a write a broken
    pipe, whichever comes first; every later collective fails the same way. gloo notices at once, so the
    rank's next collective raises it, usually before the launcher has stopped the rank."""
    return any(words in str(error) for words in _GLOO_PEER_GONE)
