"""What an objective sees for one optimizer step.

Shapes: B completions (rows) on this rank, T padded completion tokens. All tensors share the device of
the policy. Groups (the G completions of one prompt) are always whole on one rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class StepBatch:
    mask: torch.Tensor                      # [B,T] float, 1 on completion tokens that may count in the loss
    advantages: torch.Tensor                # [B] one advantage per completion (outcome rewards)
    group_ids: torch.Tensor                 # [B] long, 0..n_groups-1 on this rank
    logp_old: torch.Tensor | None = None    # [B,T] policy log-probs at rollout time; None = on-policy
    logp_ref: torch.Tensor | None = None    # [B,T] frozen reference model log-probs
    entropy: torch.Tensor | None = None     # [B,T] policy entropy at rollout time (nats)
    truncated: torch.Tensor | None = None   # [B] bool, the completion hit max_new_tokens without EOS
    progress: float = 0.0                   # training progress in [0,1] (schedules, e.g. D3S)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # part-specific [B,T] statistics

    @property
    def n_rows(self) -> int:
        return self.mask.shape[0]

    def rows(self, index) -> "StepBatch":
        """The sub-batch of rows ``index`` (a slice, index tensor or boolean mask)."""
        cut = lambda t: None if t is None else t[index]  # noqa: E731
        changes = {f.name: cut(getattr(self, f.name)) for f in fields(self)
                   if torch.is_tensor(getattr(self, f.name)) or getattr(self, f.name) is None}
        changes["extras"] = {k: v[index] for k, v in self.extras.items()}
        return replace(self, **changes)
