"""RolloutBatch: what a rollout worker returns (the contract between generation and training)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    """B = n_prompts * G completions, prompt of P tokens (left-padded), completion of T tokens.

    Rows of one prompt are consecutive and share a ``group_ids`` value.
    """

    prompt_ids: torch.Tensor        # [B,P] long, left-padded with the pad token
    prompt_mask: torch.Tensor       # [B,P] long, 1 on real prompt tokens
    completion_ids: torch.Tensor    # [B,T] long, right-padded after EOS
    completion_mask: torch.Tensor   # [B,T] float, 1 on generated tokens up to and including EOS
    group_ids: torch.Tensor         # [B] long, 0..n_prompts-1
    truncated: torch.Tensor         # [B] bool, stopped by max_new_tokens before EOS
    prompts: list[str]              # [B] prompt text as given to the model
    completions: list[str]          # [B] decoded completion, special tokens removed
    columns: dict[str, list]        # dataset columns, one value per row (for verifiers)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """[B] completion lengths in tokens."""
        return self.completion_mask.sum(-1)
