"""Per-token policy losses (quantities to minimise; padding is handled by the weights).

Every surrogate maps ``logp`` [b,T] (with gradient) and the step batch's ``logp_old``, ``advantages``
and ``mask`` to a loss [b,T]. When ``logp_old`` is None the update is on-policy and ``logp.detach()``
stands in for it (ratio 1, as in TRL).
"""

from __future__ import annotations

import torch

from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.registry import Part, register_part

LOG_RATIO_LIMIT = 20.0  # verl's guard: exp() of a larger log-ratio overflows in fp16/bf16


class Surrogate(Part):
    needs = frozenset({"logp_old"})

    def loss(self, logp: torch.Tensor, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        raise NotImplementedError


def old_logp(logp: torch.Tensor, batch: StepBatch) -> torch.Tensor:
    return logp.detach() if batch.logp_old is None else batch.logp_old


@register_part("surrogate", "ppo_clip")
class PPOClip(Surrogate):
    """Token-level PPO clip: -min(r A, clip(r, 1-eps_low, 1+eps_high) A), optional dual clip.

    r_t = exp(logp_t - logp_old_t) (log-ratio clamped to +-20). DAPO's clip-higher is eps_high > eps_low.
    ``dual_clip`` (verl's ``clip_ratio_c``, must be > 1) caps the loss of A<0 tokens at -A*c.
    Papers: PPO (1707.06347), GRPO (2402.03300), DAPO (2503.14476).
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def model_post_init(self, _):
        if not (0 <= self.eps_low < 1 and self.eps_high > 0):
            raise ValueError("need 0 <= eps_low < 1 and eps_high > 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError("dual_clip must be > 1")

    def loss(self, logp, batch, metrics):
        adv = batch.advantages[:, None]
        log_ratio = (logp - old_logp(logp, batch)).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        loss = torch.maximum(-adv * ratio, -adv * clipped)
        m = batch.mask
        if self.dual_clip is not None:
            dual = (adv < 0) & (loss > -adv * self.dual_clip)
            loss = torch.where(dual, -adv * self.dual_clip, loss)
            metrics.mean("objective/clip_frac_dual", dual.float(), m)
        metrics.mean("objective/clip_frac_low", ((ratio < 1 - self.eps_low) & (adv < 0)).float(), m)
        metrics.mean("objective/clip_frac_high", ((ratio > 1 + self.eps_high) & (adv > 0)).float(), m)
        metrics.mean("objective/ratio_mean", ratio, m)
        metrics.max("objective/ratio_max", ratio, m)
        metrics.min("objective/ratio_min", ratio, m)
        metrics.mean("objective/ppo_kl", -log_ratio, m)
        return loss
