"""Advantage estimators: scalar rewards [B] of G completions per prompt -> advantages [B].

Groups are identified by ``group_ids`` [B] (whole on one rank, so no collective is needed). A NaN
reward (every verifier abstained) gets advantage 0 and is left out of its group's statistics, as in TRL.
A group with a single valid member gets advantage 0 (mean-centring leaves nothing; TRL's convention,
where verl would return the raw reward).
"""

from __future__ import annotations

import torch

from rlkit.objectives.registry import Part, register_part


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and unbiased std of its group's valid (non-NaN) rewards, both [B]."""
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0).double()
    n_groups = int(group_ids.max()) + 1 if group_ids.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.double).index_add_(0, group_ids, valid.double())
    total = torch.zeros(n_groups, dtype=torch.double).index_add_(0, group_ids, r)
    mean = total / count.clamp(min=1)
    sq_dev = torch.where(valid, (r - mean[group_ids]).square(), 0.0)
    var = torch.zeros(n_groups, dtype=torch.double).index_add_(0, group_ids, sq_dev) / (count - 1).clamp(min=1)
    return mean[group_ids].to(rewards.dtype), var.sqrt()[group_ids].to(rewards.dtype)


class AdvantageEstimator(Part):
    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_part("advantage", "group_zscore")
class GroupZScore(AdvantageEstimator):
    """A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased (GRPO, 2402.03300 sec. 4.1.2; verl eps)."""

    eps: float = 1e-6

    def __call__(self, rewards, group_ids):
        mean, std = group_stats(rewards, group_ids)
        return torch.nan_to_num((rewards - mean) / (std + self.eps), nan=0.0)


@register_part("advantage", "group_mean")
class GroupMean(AdvantageEstimator):
    """A_i = R_i - mean_g R: no std division (Dr. GRPO, 2503.20783)."""

    def __call__(self, rewards, group_ids):
        mean, _ = group_stats(rewards, group_ids)
        return torch.nan_to_num(rewards - mean, nan=0.0)
