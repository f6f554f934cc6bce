"""What an objective sees for one optimizer step.

Shapes: B completions (rows) on this rank, T padded completion tokens. All tensors share the device of
the policy. Groups (the G completions of one prompt) are always whole on one rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class StepBatch:
    mask: torch.Tensor  # [B,T] float, 1 on completion tokens that may count in the loss
    advantages: torch.Tensor  # [B] one advantage per completion (outcome rewards)
    group_ids: torch.Tensor  # [B] long, 0..n_groups-1 on this rank
    logp_old: torch.Tensor | None = None  # [B,T] proximal log-probs log pi_old: the policy at the start of
    # the step, when several optimizer steps share a rollout batch; None = on-policy (pi_old = sg(pi_theta))
    logp_behaviour: torch.Tensor | None = None  # [B,T] log mu: the sampler's log-probs of the sampled tokens
    logp_trainer: torch.Tensor | None = None  # [B,T] the trainer's log pi of the sampled tokens under the policy
    # at rollout time, from its no-grad scoring pass (Need.LOGP_TRAINER)
    logp_ref: torch.Tensor | None = None  # [B,T] frozen reference model log-probs
    logp_teacher: torch.Tensor | None = None  # [B,T] frozen teacher log-probs of the sampled tokens
    entropy: torch.Tensor | None = None  # [B,T] policy entropy at rollout time (nats)
    truncated: torch.Tensor | None = None  # [B] bool, the completion hit max_new_tokens without EOS
    progress: float = 0.0  # training progress in [0,1] (schedules, e.g. D3S)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # part-specific [B,T] statistics
    # token ids, for the trainer's forward passes (prompt left-padded to P tokens)
    prompt_ids: torch.Tensor | None = None  # [B,P] long
    prompt_mask: torch.Tensor | None = None  # [B,P] long, 1 on prompt tokens
    completion_ids: torch.Tensor | None = None  # [B,T] long, the sampled tokens

    @property
    def n_rows(self) -> int:
        return self.mask.shape[0]

    def rows(self, index) -> StepBatch:
        """The sub-batch of rows ``index`` (a slice, index tensor or boolean mask)."""
        cut = lambda t: None if t is None else t[index]  # noqa: E731
        changes: dict[str, Any] = {
            f.name: cut(getattr(self, f.name))
            for f in fields(self)
            if torch.is_tensor(getattr(self, f.name)) or getattr(self, f.name) is None
        }
        changes["extras"] = {k: v[index] for k, v in self.extras.items()}
        return replace(self, **changes)


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group index 0..n-1 per row [B] (whatever the labels) and the number of groups n."""
    labels, index = torch.unique(group_ids, return_inverse=True)
    return index, labels.numel()


def group_sum(values: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of ``values`` [B, ...] per group -> [n_groups, ...] (dtype of ``values``)."""
    out = values.new_zeros((n_groups, *values.shape[1:]))
    return out.index_add_(0, index, values)


def group_moments(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-group count of valid rewards, mean, and sum of squared deviations (float64, [n_groups] each),
    plus the dense group index of every row [B]."""
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0).double()
    index, n_groups = group_index(group_ids)
    count = group_sum(valid.double(), index, n_groups)
    mean = group_sum(r, index, n_groups) / count.clamp(min=1)
    sq_dev = group_sum(torch.where(valid, (r - mean[index]).square(), 0.0), index, n_groups)
    return count, mean, sq_dev, index


def group_has_signal(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Whether each group's valid (non-NaN) rewards are not all equal: [n_groups] bool, groups in sorted
    order of their ids. The one test of "this group can teach something" in rlkit (zero advantages,
    DAPO's dynamic sampling, its refill): an exact comparison, so a group of equal rewards that are not
    exactly representable (0.1, 0.1, 0.1) never passes through rounding error. A singleton has no signal.
    """
    index, n_groups = group_index(group_ids)
    valid = ~torch.isnan(rewards)
    top = torch.full((n_groups,), -torch.inf, dtype=rewards.dtype, device=rewards.device)
    top = top.scatter_reduce(0, index, torch.where(valid, rewards, -torch.inf), "amax")
    bottom = torch.full_like(top, torch.inf).scatter_reduce(0, index, torch.where(valid, rewards, torch.inf), "amin")
    return top > bottom


def fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least single precision (log-ratios, cumsums and entropies are never bf16/fp16)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
