"""Advantage estimators: scalar rewards [B] of G completions per prompt -> advantages [B].

Groups are identified by ``group_ids`` [B] (whole on one rank, so group statistics need no collective).
A NaN reward (every verifier abstained) gets advantage 0 and is left out of its group's statistics, as in
TRL. A group with a single valid member gets advantage 0 (mean-centring leaves nothing; TRL's
convention, where verl would return the raw reward).
"""

from __future__ import annotations

import torch
from pydantic import Field

from rlkit.distributed import all_sum
from rlkit.objectives.batch import group_moments
from rlkit.objectives.registry import Part, register_part


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and unbiased std of its group's valid (non-NaN) rewards, both [B]."""
    count, mean, sq_dev, index = group_moments(rewards, group_ids)
    std = (sq_dev / (count - 1).clamp(min=1)).sqrt()
    return mean[index].to(rewards.dtype), std[index].to(rewards.dtype)


class AdvantageEstimator(Part):
    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_part("advantage", "group_zscore")
class GroupZScore(AdvantageEstimator):
    """A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased (GRPO, 2402.03300 sec. 4.1.2; verl eps)."""

    eps: float = Field(1e-6, ge=0)  # a negative eps can make std + eps negative: the advantages reversed

    def __call__(self, rewards, group_ids):
        mean, std = group_stats(rewards, group_ids)
        return torch.nan_to_num((rewards - mean) / (std + self.eps), nan=0.0)


@register_part("advantage", "group_mean")
class GroupMean(AdvantageEstimator):
    """A_i = R_i - mean_g R: no std division (Dr. GRPO, 2503.20783)."""

    def __call__(self, rewards, group_ids):
        mean, _ = group_stats(rewards, group_ids)
        return torch.nan_to_num(rewards - mean, nan=0.0)


@register_part("advantage", "batch_std")
class BatchStd(AdvantageEstimator):
    """Group-centred advantages scaled by the std of every reward of the step (TRL scale_rewards=batch).

    A_i = (R_i - mean_g R) / (std_batch R + eps), std unbiased over every valid reward of the step on all
    ranks, eps 1e-4 as TRL.
    """

    eps: float = Field(1e-4, ge=0)  # a negative eps can make std + eps negative: the advantages reversed

    def __call__(self, rewards, group_ids):
        mean, _ = group_stats(rewards, group_ids)
        valid = ~torch.isnan(rewards)
        r = torch.where(valid, rewards, 0.0).double()
        n, total, total_sq = all_sum(torch.stack([valid.double().sum(), r.sum(), r.square().sum()])).unbind()
        var = (total_sq - total.square() / n.clamp(min=1)) / (n - 1).clamp(min=1)
        std = var.clamp(min=0).sqrt().to(rewards.dtype)
        return torch.nan_to_num((rewards - mean) / (std + self.eps), nan=0.0)


@register_part("advantage", "rloo")
class RLOO(AdvantageEstimator):
    """Leave-one-out baseline (RLOO, 2402.14740): A_i = R_i - mean of the group's other rewards.

    A_i = R_i - mean_{j != i, j in g} R_j = n/(n-1) (R_i - mean_g R), n = valid rewards in the group.
    Singletons get 0.
    """

    def __call__(self, rewards, group_ids):
        count, mean, _, index = group_moments(rewards, group_ids)
        n = count[index]
        adv = (n / (n - 1).clamp(min=1)) * (rewards.double() - mean[index])
        return torch.nan_to_num(torch.where(n > 1, adv, 0.0), nan=0.0).to(rewards.dtype)
