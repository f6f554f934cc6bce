"""The KL reference: log-probs of completions under the model RL started from.

Either a frozen model of its own (placed like the policy: sharded under ZeRO-3), or, when the policy
trains LoRA adapters, the policy itself with its adapters disabled: its frozen base weights are exactly
the starting model, so no second copy is held in memory (as TRL's GRPOTrainer does with peft).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlkit.objectives import StepBatch
from rlkit.trainer.logprobs import TokenScores

Forward = Callable[[torch.nn.Module, StepBatch], TokenScores]


class FrozenReference:
    """A separate frozen model."""

    def __init__(self, model: torch.nn.Module, forward: Forward):
        self.model, self.forward = model, forward

    def logp(self, batch: StepBatch) -> torch.Tensor:
        """[b,T] log-probs of ``batch``'s completion tokens, no gradient."""
        with torch.no_grad():
            return self.forward(self.model, batch).logp


class AdaptersOffReference(FrozenReference):
    """The LoRA policy (as prepared by accelerate) run with its adapters disabled."""

    def __init__(self, policy: torch.nn.Module, peft_model, forward: Forward):
        super().__init__(policy, forward)
        self.peft_model = peft_model  # the unwrapped peft model, which owns the adapter switch

    def logp(self, batch: StepBatch) -> torch.Tensor:
        with self.peft_model.disable_adapter():
            return super().logp(batch)
