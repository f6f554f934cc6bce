"""Token weights: parts that multiply the aggregation's weights W [B,T] after selection."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch, group_index, group_sum
from rlkit.objectives.registry import Need, Part, register_part


class Weighting(Part):
    def weigh(self, weights: torch.Tensor, mask: torch.Tensor, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        raise NotImplementedError


def chunked_log_normaliser(logits: torch.Tensor, chunk: int) -> torch.Tensor:
    """logsumexp over the vocabulary [b,T,1] in fp32, one vocabulary chunk at a time (no fp32 copy of
    the whole [b,T,V] logits)."""
    out = torch.logsumexp(logits[..., :chunk].float(), -1, keepdim=True)
    for v0 in range(chunk, logits.shape[-1], chunk):
        out = torch.logaddexp(out, torch.logsumexp(logits[..., v0 : v0 + chunk].float(), -1, keepdim=True))
    return out


def group_divergence(logits: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """TW-GRPO's D_{i,t} [b,T]: divergence of rollout i's next-token distribution at position t from
    its group's mean log-distribution at the same position, k3-form summed over the vocabulary:

        lp_{i,t} = log_softmax(logits_{i,t})  (log(1/V) where mask_{i,t} = 0, as the reference code)
        mbar_t = mean_{i in g} lp_{i,t};   D_{i,t} = sum_v exp(x) - x - 1,  x = clamp(mbar_t - lp_{i,t}, +-11)

    ``logits`` [b,T,V] of whole groups; computed ``chunk`` vocabulary entries at a time in fp32.
    """
    index, n_groups = group_index(group_ids)
    size = group_sum(torch.ones(index.shape, dtype=torch.float32, device=logits.device), index, n_groups)
    lse = chunked_log_normaliser(logits, chunk)
    valid = mask[..., None] > 0
    uniform = -math.log(logits.shape[-1])
    divergence = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    for v0 in range(0, logits.shape[-1], chunk):
        lp = torch.where(valid, logits[..., v0 : v0 + chunk].float() - lse, uniform)
        mean = group_sum(lp, index, n_groups) / size[:, None, None]
        x = (mean[index] - lp).clamp(-11, 11)
        divergence += (x.exp() - x - 1).sum(-1)
    return divergence


@register_part("weighting", "tw_grpo")
class TWGRPO(Weighting):
    """TW-GRPO token weights (2505.24718) from the intra-group divergence at each position.

    As in the reference code longmalongma/TW-GRPO@aa529ff:

        D_t = mean_{i in g} D_{i,t}   (see :func:`group_divergence`; the same for all G rollouts at t)
        w_{i,t} = 1 + (alpha - 1) * Dhat_t,   W <- W * w

    Dhat normalises D over the group's positions. ``max`` (default): Dhat = D / max_t D. The reference
    code min-max normalises over all padded positions, where an all-padding position has D = 0 and sets
    the minimum; ``max`` is that result without depending on how far the trainer pads. ``minmax``:
    (D - min) / (max - min) over positions where some rollout of the group is active. Weights lie in
    [1, alpha] and are not renormalised (with token_mean they scale the step by mean(w), as the code).
    alpha = 1.7 from ``scripts/tw-grpo.sh`` (the code default is 1.4).
    Departure: the weights come from the no-grad scoring pass, so they are always detached (the
    reference code lets gradients flow through them, which docs/objectives.md §6 advises against). The
    trainer must run that pass with ``group_ids`` and every group whole in each chunk.
    """

    needs = frozenset({Need.LOGITS})

    alpha: float = Field(1.7, ge=0)  # weights lie in [1, alpha]: a negative alpha would reverse some tokens' gradient
    normalise: Literal["max", "minmax"] = "max"
    vocab_chunk: int = 8192

    def on_logits(self, logits, completion_ids, mask, group_ids=None, teacher_logits=None):
        if group_ids is None:
            raise ValueError("tw_grpo needs the group ids of the scored rows")
        return {"tw_grpo_divergence": group_divergence(logits, mask, group_ids, self.vocab_chunk)}

    def weigh(self, weights, mask, batch, metrics):
        index, n_groups = group_index(batch.group_ids)
        rows = group_sum(torch.ones_like(batch.advantages, dtype=torch.double), index, n_groups)
        per_position = group_sum(batch.extras["tw_grpo_divergence"].double(), index, n_groups) / rows[:, None]
        high = per_position.amax(-1, keepdim=True)  # D >= 0, so inactive positions (D = 0) never set it
        low = torch.zeros_like(high)
        if self.normalise == "minmax":
            active = group_sum(batch.mask.double(), index, n_groups) > 0
            low = torch.where(active, per_position, high).amin(-1, keepdim=True)
        scaled = (per_position - low) / (high - low + 1e-8)
        w = (1 + (self.alpha - 1) * scaled)[index].to(weights.dtype)
        metrics.mean("objective/tw_weight_mean", w, mask)
        metrics.max("objective/tw_weight_max", w, mask)
        return weights * w
