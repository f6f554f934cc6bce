"""KL-to-reference estimators (Schulman's k1/k2/k3) and the KL regulariser part.

With d = logp_ref - logp per sampled token:
    k1 = -d                 (unbiased, can be negative)
    k2 = d^2 / 2
    k3 = exp(d) - d - 1     (unbiased, >= 0; GRPO's choice, 2402.03300 eq. 4)
A trailing ``+`` (``k3+``) is the straight-through variant: the value of the estimator, the gradient of
k2 (verl: the expected gradient of k1/k3 is not the gradient of KL). k3 follows verl's guards: d is
clamped to [-20, 20] and the result to [-10, 10].

Two placements, two parts of kind ``kl``: ``kl`` adds beta * k per token to the loss (GRPO, TRL, verl
``use_kl_loss``); ``kl_in_reward`` subtracts beta * sum_t k from each completion's reward before the
advantage (PPO style, verl ``use_kl_in_reward``). Switching is ``kl: {type: kl_in_reward, beta: ...}``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlkit.distributed import all_sum
from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch, fp32
from rlkit.objectives.registry import Need, Part, register_part


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate, same shape as ``logp``."""
    if estimator.endswith("+"):
        value = kl_estimate(logp, logp_ref, estimator[:-1])
        k2 = kl_estimate(logp, logp_ref, "k2")
        return k2 - k2.detach() + value.detach()
    d = logp_ref - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        d = d.clamp(-20, 20)
        return (d.exp() - d - 1).clamp(-10, 10)
    raise ValueError(f"unknown KL estimator {estimator!r}")


class Regulariser(Part):
    """A KL-to-reference term: beta times a per-token estimate, in the loss or in the reward."""

    needs = frozenset({Need.LOGP_REF})

    beta: float = Field(0.0, ge=0)  # a negative beta would reward moving away from the reference
    estimator: Literal["k1", "k2", "k3", "k1+", "k2+", "k3+"] = "k3"

    def loss(self, logp: torch.Tensor, batch: StepBatch, metrics: Metrics) -> torch.Tensor | float:
        """Per-token term added to the surrogate [b,T] (0 when the KL lives in the reward)."""
        return 0.0

    def reward_penalty(self, batch: StepBatch, metrics: Metrics | None) -> torch.Tensor | float:
        """Amount [B] subtracted from the scalar rewards before the advantage (0 when in the loss)."""
        return 0.0

    def token_weights(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Weights [B,T] of the loss term of its own, or None when it shares the objective's weights W."""
        return None

    @property
    def weighted_with_surrogate(self) -> bool:
        """Whether :meth:`loss` adds a non-zero term under the objective's weights W."""
        return False


@register_part("kl", "kl")
class KLPenalty(Regulariser):
    """beta * KL(pi || pi_ref) per token in the loss, aggregated with the surrogate (TRL's placement).

    Default k3, GRPO's estimator (2402.03300 eq. 4). With ``aggregation: objective`` it shares the step's
    weights W, so selected-out tokens carry no KL either, nor do rows that W leaves at 0 (Balanced
    Aggregation's zero-advantage rows). ``aggregation: token_mean`` weighs the KL with m / N_tok of its
    own (N_tok = kept tokens of the step on all ranks), so every kept token carries it.
    """

    aggregation: Literal["objective", "token_mean"] = "objective"

    def token_weights(self, mask):
        if not self.beta or self.aggregation == "objective":
            return None
        return mask / all_sum(mask.sum()).clamp(min=1)

    @property
    def weighted_with_surrogate(self) -> bool:
        return bool(self.beta) and self.aggregation == "objective"

    def loss(self, logp, batch, metrics):
        if not self.beta:  # inactive: the trainer provides no logp_ref (and 0 * KL could be 0 * inf)
            return 0.0
        kl = kl_estimate(fp32(logp), fp32(batch.logp_ref), self.estimator)
        metrics.mean("objective/kl", kl, batch.mask)
        return self.beta * kl


@register_part("kl", "kl_in_reward")
class KLInReward(Regulariser):
    """KL in the reward (verl ``algorithm.use_kl_in_reward``): R_i <- R_i - beta * sum_t m_t k(t).

    k is the estimator on the policy at rollout time vs the reference (verl's default ``kl`` = k1, hence
    the default here); the sequence sum is what verl's outcome estimators see after summing its
    token-level rewards. Only a fixed beta (verl also has an adaptive controller). The rollout-time
    log-probs of the sampled tokens are the trainer's scoring pass's own (``logp_trainer``: on-policy
    steps, which have no ``logp_old``, get them too, and no [B,T,V] logits are formed for them). Nothing
    is added to the loss.
    """

    needs = frozenset({Need.LOGP_REF, Need.LOGP_TRAINER})
    estimator: Literal["k1", "k2", "k3"] = "k1"

    def reward_penalty(self, batch, metrics):
        if not self.beta:
            return 0.0
        kl = kl_estimate(fp32(batch.logp_trainer), fp32(batch.logp_ref), self.estimator)
        penalty = self.beta * torch.where(batch.mask > 0, kl, 0.0).sum(-1)
        if metrics is not None:
            metrics.mean("objective/kl", kl, batch.mask)
            metrics.mean("objective/kl_reward_penalty", penalty)
        return penalty
