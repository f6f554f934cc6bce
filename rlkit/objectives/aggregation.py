"""Loss aggregation as per-token weights.

An aggregation returns W [B,T] such that the step's loss is sum(W * l). Normalisers (token counts,
sequence counts) are summed over every rank of the optimizer step, so the loss, and its gradient, does
not depend on how the batch is split into micro-batches or processes. Rows with no valid token are
excluded from sequence counts (verl's convention) and contribute nothing.
"""

from __future__ import annotations

import torch

from rlkit.distributed import all_sum
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.registry import Part, register_part


class Aggregation(Part):
    def weights(self, mask: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        raise NotImplementedError


@register_part("aggregation", "token_mean")
class TokenMean(Aggregation):
    """Mean over every valid token of the step: W = m / sum(m) (DAPO; verl's default)."""

    def weights(self, mask, batch):
        return mask / all_sum(mask.sum()).clamp(min=1)


@register_part("aggregation", "seq_mean_token_mean")
class SeqMeanTokenMean(Aggregation):
    """Token mean within each sequence, then mean over sequences: W = m / |o_i| / N_seq (GRPO paper)."""

    def weights(self, mask, batch):
        lengths = mask.sum(-1, keepdim=True)
        n_seq = all_sum((lengths > 0).sum())
        return mask / lengths.clamp(min=1) / n_seq.clamp(min=1)
