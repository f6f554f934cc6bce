"""KL-to-reference estimators (Schulman's k1/k2/k3) and the KL regulariser part.

With d = logp_ref - logp per sampled token:
    k1 = -d                 (unbiased, can be negative)
    k2 = d^2 / 2
    k3 = exp(d) - d - 1     (unbiased, >= 0; GRPO's choice, 2402.03300 eq. 4)
A trailing ``+`` (``k3+``) is the straight-through variant: the value of the estimator, the gradient of
k2 (verl: the expected gradient of k1/k3 is not the gradient of KL). k3 follows verl's guards: d is
clamped to [-20, 20] and the result to [-10, 10].
"""

from __future__ import annotations

from typing import Literal

import torch

from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.registry import Part, register_part


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


@register_part("kl", "kl")
class KLPenalty(Part):
    """beta * KL(pi || pi_ref) per token, added to the surrogate and aggregated with it (TRL's placement)."""

    needs = frozenset({"logp_ref"})

    beta: float = 0.0
    estimator: Literal["k1", "k2", "k3", "k1+", "k2+", "k3+"] = "k3"

    def loss(self, logp: torch.Tensor, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        kl = kl_estimate(logp, batch.logp_ref, self.estimator)
        metrics.mean("objective/kl", kl, batch.mask)
        return self.beta * kl
