"""An objective: advantage estimator x surrogate x selection x aggregation x weighting x KL.

Usage inside any training loop (the trainer does exactly this)::

    objective = build_objective({"preset": "grpo"})
    batch.advantages = objective.advantages(rewards, batch)
    weights = objective.prepare(batch, metrics)              # once per optimizer step, whole batch
    for rows in micro_batches:
        loss = objective.loss(logp[rows], batch.rows(rows), weights[rows], metrics)
        loss.backward()

``prepare`` computes every selection rule and normaliser over the whole optimizer step and all ranks;
``loss`` is then a plain weighted sum, so the gradient is the same for any micro-batch split. Under
data parallelism the loss is multiplied by the world size, because DDP (and DeepSpeed) average
gradients over ranks while the weights already hold global normalisers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.distributed import all_sum, world_size
from rlkit.metrics import Metrics
from rlkit.objectives.aggregation import Aggregation
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.kl import KLPenalty
from rlkit.objectives.registry import Part
from rlkit.objectives.surrogates import Surrogate
from rlkit.advantages import AdvantageEstimator


@dataclass(frozen=True)
class Objective:
    advantage: AdvantageEstimator
    surrogate: Surrogate
    aggregation: Aggregation
    kl: KLPenalty
    selection: tuple[Part, ...] = ()
    weighting: tuple[Part, ...] = ()
    entropy_bonus: float = 0.0
    name: str = field(default="custom", compare=False)

    @property
    def parts(self) -> list[Part]:
        active_kl = [self.kl] if self.kl.beta else []
        return [self.advantage, self.surrogate, self.aggregation, *self.selection, *self.weighting, *active_kl]

    @property
    def needs(self) -> frozenset[str]:
        """What the trainer must compute before ``prepare``: subset of logp_old, logp_ref, entropy."""
        return frozenset().union(*(p.needs for p in self.parts))

    def advantages(self, rewards: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        """Advantages [B] from scalar rewards [B]; ``batch`` (log-probs already filled) is there for
        reward-side terms such as a KL penalty in the reward."""
        return self.advantage(rewards, batch.group_ids)

    def prepare(self, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        """Per-token weights W [B,T] for the whole optimizer step (selection, aggregation, weighting)."""
        mask = batch.mask
        for rule in self.selection:
            mask = rule.select(mask, batch, metrics)
        weights = self.aggregation.weights(mask, batch)
        for rule in self.weighting:
            weights = rule.weigh(weights, mask, batch, metrics)
        kept, total = all_sum(torch.stack([mask.sum(), batch.mask.sum()]).float())
        metrics.mean("objective/kept_token_frac", float(kept / total.clamp(min=1)))
        return weights

    def loss(self, logp: torch.Tensor, batch: StepBatch, weights: torch.Tensor, metrics: Metrics,
             entropy: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss of a micro-batch: world_size * sum(W * l), l = surrogate + KL - entropy bonus.

        ``logp``, ``weights``, ``entropy``: [b,T]; ``batch``: the micro-batch's rows of the step batch.
        """
        per_token = self.surrogate.loss(logp, batch, metrics)
        if self.kl.beta:
            per_token = per_token + self.kl.loss(logp, batch, metrics)
        if self.entropy_bonus:
            per_token = per_token - self.entropy_bonus * entropy
        # where(), not multiplication alone: a non-finite value at a zero-weight position must not leak
        per_token = torch.where(weights != 0, per_token, 0.0)
        metrics.mean("objective/loss", per_token.detach(), batch.mask)
        return (weights * per_token).sum() * world_size()
