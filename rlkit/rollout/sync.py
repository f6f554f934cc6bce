"""Sync you can trust: after every weight sync, the engine's log-probs on a fixed probe must equal the
trainer's.

A sync can "succeed" and leave the engine sampling from other weights: a tied output layer whose packed
copy was not refreshed (vLLM on a CPU), a sync that was skipped, weights loaded in the wrong dtype, sleep
mode that dropped an update. Each shows up as a log-prob difference on any input, so one short probe
sequence (a training prompt, a few tokens) scored by both sides after each sync catches them all.
"""

from __future__ import annotations

import torch


class EngineOutOfSync(RuntimeError):
    """The engine's weights are not the trainer's after a sync; the run stops (checkpoints stay intact)."""


def default_tolerance(dtype: str, mixed_precision: str) -> float:
    """1e-4 when the trainer computes in fp32 (kernel differences are ~1e-6 there); 0.05 in bf16/fp16,
    whose 8 or 11 mantissa bits make per-token log-prob differences of 1e-2 between kernels normal."""
    return 1e-4 if dtype == "float32" and mixed_precision == "no" else 5e-2


def check_sync(diff: torch.Tensor, tol: float, engine: str, version: int) -> float:
    """``diff``: max |engine - trainer| log-prob over the probe's tokens (the largest over ranks, so that
    every rank stops together); raises :class:`EngineOutOfSync` above ``tol`` or when it is not finite."""
    if not torch.isfinite(diff) or diff > tol:
        raise EngineOutOfSync(
            f"after syncing policy version {version} into the {engine} engine, its log-probs on the sync probe "
            f"differ from the trainer's by {float(diff):.3g} (rollout.engine.sync_tol={tol:g}): the engine does "
            "not sample from the trainer's weights (a stale or tied output layer, a skipped sync, another "
            "dtype)"
        )
    return float(diff)
