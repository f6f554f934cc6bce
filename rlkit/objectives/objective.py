"""An objective: advantage estimator x surrogate x selection x aggregation x weighting x KL.

Usage on plain tensors, inside any training loop (the trainer does exactly this)::

    objective = build_objective({"preset": "dapo", "surrogate": {"eps_high": 0.3}})
    batch = StepBatch(mask=mask, advantages=torch.zeros(B), group_ids=group_ids,  # [B,T], [B], [B]
                      logp_old=logp_old)          # + whatever objective.needs lists (None = on-policy)
    # parts that need Need.LOGITS: batch.extras = objective.on_logits(logits, completion_ids, mask, group_ids)
    batch.advantages = objective.advantages(rewards, batch)          # rewards [B]
    metrics = Metrics()
    weights = objective.prepare(batch, metrics)                      # once per optimizer step, whole batch
    for rows in torch.arange(B).split(micro_batch_size):             # any split of the rows
        loss = objective.loss(logp_of(rows), batch.rows(rows), weights[rows], metrics)
        loss.backward()
    metrics.result()                                                 # {"objective/clip_frac_high": ...}

``prepare`` computes every selection rule and normaliser over the whole optimizer step and all ranks;
``loss`` is then a plain weighted sum, so the gradient is the same for any micro-batch split. Under
data parallelism the loss is multiplied by the world size, because DDP (and DeepSpeed) average
gradients over ranks while the weights already hold global normalisers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rlkit.distributed import all_sum, world_size
from rlkit.metrics import Metrics
from rlkit.objectives.aggregation import Aggregation
from rlkit.objectives.batch import StepBatch, fp32, group_has_signal, group_index
from rlkit.objectives.kl import Regulariser
from rlkit.objectives.registry import Need, Part, RolloutFilter
from rlkit.objectives.selection import Selection
from rlkit.objectives.surrogates import Surrogate, SurrogateInputs
from rlkit.objectives.weighting import Weighting

KL_WEIGHTS = "kl_weights"  # StepBatch.extras key of a KL term's own weights (KLPenalty aggregation: token_mean)

if TYPE_CHECKING:  # the advantages module imports this one's dependencies
    from rlkit.objectives.advantages import AdvantageEstimator


@dataclass(frozen=True)
class Objective:
    advantage: AdvantageEstimator
    surrogate: Surrogate
    aggregation: Aggregation
    kl: Regulariser
    selection: tuple[Selection, ...] = ()
    weighting: tuple[Weighting, ...] = ()
    entropy_bonus: float = 0.0
    name: str = field(default="custom", compare=False)

    @property
    def parts(self) -> list[Part]:
        active_kl = [self.kl] if self.kl.beta else []
        return [self.advantage, self.surrogate, self.aggregation, *self.selection, *self.weighting, *active_kl]

    @property
    def needs(self) -> frozenset[Need]:
        """What the trainer must provide: the union of the parts' :attr:`Part.needs`.
        With ``entropy_bonus`` the trainer must also pass the current entropy (with gradient) to loss."""
        return frozenset[Need]().union(*(p.needs for p in self.parts))

    @property
    def rollout_filter(self) -> RolloutFilter | None:
        """The rollout-stage filter one of the parts asks the trainer for (DAPO's refill), or None."""
        filters = [f for f in (p.rollout_filter() for p in self.parts) if f is not None]
        if len(filters) > 1:
            raise ValueError("at most one objective part may filter rollouts")
        return filters[0] if filters else None

    def on_logits(
        self,
        logits: torch.Tensor,
        completion_ids: torch.Tensor,
        mask: torch.Tensor,
        group_ids: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every part's statistics from the no-grad scoring pass of a chunk of whole groups
        (logits [b,T,V], completion_ids [b,T], mask [b,T], group_ids [b], and the teacher's logits
        [b,T,V] when a part needs :attr:`Need.TEACHER_LOGITS`) -> name -> [b,T]."""
        out: dict[str, torch.Tensor] = {}
        for part in self.parts:
            if Need.LOGITS in part.needs:
                out.update(part.on_logits(logits, completion_ids, mask, group_ids, teacher_logits=teacher_logits))
        return out

    def advantages(self, rewards: torch.Tensor, batch: StepBatch, metrics: Metrics | None = None) -> torch.Tensor:
        """Advantages [B] from scalar rewards [B] (NaN = no reward). ``batch`` (log-probs and extras
        already filled) provides reward-side terms: a KL-in-reward penalty is subtracted first.

        A group without signal (:func:`group_has_signal`: its rewards all equal) gets exactly 0, whatever
        the estimator's rounding; selection parts rely on it (DAPO's dynamic sampling drops such groups)."""
        rewards = rewards - self.kl.reward_penalty(batch, metrics)
        index, _ = group_index(batch.group_ids)
        signal = group_has_signal(rewards, batch.group_ids)
        advantages = torch.where(signal[index], self.advantage(rewards, batch.group_ids), 0.0)
        if metrics is not None:
            zero, total = all_sum(torch.stack([(~signal).sum(), signal.new_tensor(signal.numel(), dtype=torch.long)]))
            metrics.mean("objective/zero_adv_group_frac", float(zero / total.clamp(min=1)))
        return advantages

    def prepare(self, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        """Per-token weights W [B,T] for the whole optimizer step (selection, aggregation, weighting)."""
        mask = batch.mask
        for rule in self.selection:
            mask = rule.select(mask, batch, metrics)
        weights = self.aggregation.weights(mask, batch, metrics)
        for weighting in self.weighting:
            weights = weighting.weigh(weights, mask, batch, metrics)
        kl_weights = self.kl.token_weights(mask)
        if kl_weights is not None:  # travels with the rows of the batch to each micro-batch's loss
            batch.extras[KL_WEIGHTS] = kl_weights
        counts = all_sum(
            torch.stack(
                [mask.sum(), batch.mask.sum(), (mask.sum(-1) > 0).sum(), (batch.mask.sum(-1) > 0).sum()]
            ).double()
        )
        metrics.mean("objective/kept_token_frac", float(counts[0] / counts[1].clamp(min=1)))
        metrics.mean("objective/kept_seq_frac", float(counts[2] / counts[3].clamp(min=1)))
        return weights

    def loss(
        self,
        logp: torch.Tensor,
        batch: StepBatch,
        weights: torch.Tensor,
        metrics: Metrics,
        entropy: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss of a micro-batch: world_size * sum(W * l), l = surrogate + KL - bonus * entropy.

        ``logp``, ``weights``: [b,T]; ``entropy``: [b,T] current policy entropy (with gradient; needed
        when ``entropy_bonus`` != 0, logged when given); ``batch``: the micro-batch's rows of the step;
        ``logits`` (with gradient), ``teacher_logits``: [n,V] at the n :meth:`active_tokens` of the
        micro-batch (row-major), when the surrogate needs :attr:`Need.STUDENT_LOGITS`.
        """
        positions = None if logits is None else self.active_tokens(batch, weights)
        surrogate = self.surrogate.loss(SurrogateInputs(logp, logits, teacher_logits, positions), batch, metrics)
        kl, kl_weights = self.kl.loss(logp, batch, metrics), batch.extras.get(KL_WEIGHTS)
        per_token = surrogate + kl if kl_weights is None else surrogate
        if self.entropy_bonus:
            if entropy is None:
                raise ValueError("entropy_bonus is set: pass the policy entropy [b,T] to Objective.loss")
            per_token = per_token - self.entropy_bonus * fp32(entropy)
        if entropy is not None:
            metrics.mean("objective/entropy", entropy.detach(), batch.mask)
        # where(), not multiplication alone: a non-finite value at a zero-weight position must not leak
        per_token = torch.where(weights != 0, per_token, 0.0)
        metrics.mean("objective/loss", per_token.detach(), batch.mask)
        total = (weights * per_token).sum()
        if kl_weights is not None:
            total = total + (kl_weights * torch.where(kl_weights != 0, kl, 0.0)).sum()
        return total * world_size()

    def active_tokens(self, batch: StepBatch, weights: torch.Tensor) -> torch.Tensor:
        """Tokens [b,T] bool whose loss can be non-zero (weights W from :meth:`prepare`, or a KL of its own).

        A row whose advantage is 0 has none when the surrogate vanishes there and nothing else is weighted
        with W (no KL sharing W, no entropy bonus): the trainer skips its forward and backward, and the
        gradient is exactly the same (W, computed over the whole step, keeps every normaliser)."""
        active = weights != 0
        if self.surrogate.vanishes_at_zero_advantage and not self.kl.weighted_with_surrogate and not self.entropy_bonus:
            active = active & (batch.advantages != 0)[:, None]
        if KL_WEIGHTS in batch.extras:
            active = active | (batch.extras[KL_WEIGHTS] != 0)
        return active

    def active_rows(self, batch: StepBatch, weights: torch.Tensor) -> torch.Tensor:
        """Rows [b] bool with an active token."""
        return self.active_tokens(batch, weights).any(-1)
