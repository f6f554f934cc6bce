"""Per-token policy losses (quantities to minimise; padding and selection are handled by the weights).

Every surrogate has one call signature, ``loss(inputs: SurrogateInputs, batch, metrics) -> [b,T]``: it maps
the micro-batch forward's ``inputs.logp`` [b,T] (with gradient; the distillation surrogate reads the
logits in ``inputs`` instead) and the step batch's ``logp_old``, ``advantages`` [b] and ``mask`` [b,T] to a
loss [b,T]. Each row is computed from that row alone, so any split of rows into
micro-batches gives the same per-token losses. When ``logp_old`` is None the update is on-policy and
``logp.detach()`` stands in for it (ratio 1, as in TRL).

All surrogates share one clipped policy-gradient core, written in log space::

    l = max(-A * rho, -A * exp(clamp(log rho, lo, hi)))          (= -min(rho A, clip(rho) A))
    l = c_A * (-A)  where A < 0 and l > -A * c                  (dual clip, optional)

and differ only in the log-ratio ``log rho`` and the window ``[lo, hi]``: PPO token ratio with a fixed
window, GSPO's length-normalised sequence ratio, CTPO's cumulative prefix ratio with a window that
widens with the token position. Log-ratios are computed in fp32; masked positions get log-ratio 0 via
``torch.where`` so that padding never reaches ``exp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field

from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch, fp32
from rlkit.objectives.registry import Need, Part, register_part

LOG_RATIO_LIMIT = 20.0  # verl's per-token guard: exp() of a larger log-ratio overflows in fp16/bf16
LOG_RHO_MAX = 10.0  # verl/CTPO guard on sequence and cumulative log-ratios (ratio <= e^10 ~ 22026)


@dataclass(frozen=True)
class SurrogateInputs:
    """What a training micro-batch's forward gives its surrogate (``Objective.loss`` builds it).

    ``logits`` and ``teacher_logits`` are there only for a surrogate that needs
    :attr:`Need.STUDENT_LOGITS`: [n,V] at the n True entries of ``positions`` [b,T] (row-major), the
    policy's with gradient, the teacher's without.
    """

    logp: torch.Tensor  # [b,T] log pi_theta of the sampled tokens, with gradient
    logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    positions: torch.Tensor | None = None


class Surrogate(Part):
    needs = frozenset({Need.LOGP_OLD})
    #: the loss and its gradient are exactly 0 on every token of a row whose advantage is 0 (the clipped
    #: policy-gradient family: l = max(-A rho, -A clip(rho)) = 0 at A = 0): the trainer may skip such rows
    vanishes_at_zero_advantage: ClassVar[bool] = False

    def loss(self, inputs: SurrogateInputs, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        """Per-token loss [b,T] of the micro-batch ``batch`` (see the module docstring)."""
        raise NotImplementedError

    def reads_advantages(self) -> bool:
        """Whether the loss depends on the advantages (a distillation loss may not): then one sample per
        prompt, whose advantage is always 0, gives it no gradient."""
        return True


def token_log_ratio(logp: torch.Tensor, batch: StepBatch) -> torch.Tensor:
    """fp32 log(pi/pi_old) per token [b,T], clamped to +-20, exactly 0 on masked positions."""
    old = logp.detach() if batch.logp_old is None else batch.logp_old
    diff = (fp32(logp) - fp32(old)).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return torch.where(batch.mask > 0, diff, 0.0)


def with_token_gradient(log_value: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """sg(log_value) + logp - sg(logp): the value of ``log_value``, the gradient of log pi per token.

    GSPO-token and CTPO use it so that d rho_t = rho_t * d log pi_t (no gradient into the prefix)."""
    return log_value.detach() + fp32(logp) - fp32(logp).detach()


def clipped_pg(
    log_rho: torch.Tensor, adv: torch.Tensor, lo, hi, log_dual, mask: torch.Tensor, metrics: Metrics
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared clipped policy-gradient loss, with its metrics.

    log_rho [b,T] or [b,1] (fp32); adv broadcastable to it; lo, hi: window in log space (floats or
    tensors shaped like log_rho); log_dual: log of the dual-clip threshold c (or None); mask: which
    entries count in the metrics. Returns the loss shaped like log_rho and where the window clipped
    (ratio below it with A < 0 or above it with A > 0).
    """
    rho = log_rho.exp()
    clipped = log_rho.clamp(lo, hi).exp()
    loss = torch.maximum(-adv * rho, -adv * clipped)
    if log_dual is not None:
        cap = -adv * (log_dual.exp() if torch.is_tensor(log_dual) else math.exp(log_dual))
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        metrics.mean("objective/clip_frac_dual", dual.float(), mask)
    low = (log_rho < lo) & (adv < 0)
    high = (log_rho > hi) & (adv > 0)
    metrics.mean("objective/clip_frac_low", low.float(), mask)
    metrics.mean("objective/clip_frac_high", high.float(), mask)
    metrics.mean("objective/ratio_mean", rho, mask)
    metrics.max("objective/ratio_max", rho, mask)
    metrics.min("objective/ratio_min", rho, mask)
    return loss, low | high


class ClippedSurrogate(Surrogate):
    """Options shared by the fixed-window surrogates (PPO-clip, GSPO, GSPO-token)."""

    vanishes_at_zero_advantage = True

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def model_post_init(self, _):
        if not (0 <= self.eps_low < 1 and self.eps_high > 0):
            raise ValueError("need 0 <= eps_low < 1 and eps_high > 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError("dual_clip must be > 1")

    def window(self) -> tuple[float, float, float | None]:
        log_dual = None if self.dual_clip is None else math.log(self.dual_clip)
        return math.log1p(-self.eps_low), math.log1p(self.eps_high), log_dual


@register_part("surrogate", "ppo_clip")
class PPOClip(ClippedSurrogate):
    """Token-level PPO clip: -min(r A, clip(r, 1-eps_low, 1+eps_high) A), optional dual clip.

    r_t = exp(logp_t - logp_old_t) (log-ratio clamped to +-20). DAPO's clip-higher is eps_high > eps_low.
    ``dual_clip`` (verl's ``clip_ratio_c``, must be > 1) caps the loss of A<0 tokens at -A*c; off by
    default (TRL and the papers have none; verl always applies c=3).
    Papers: PPO (1707.06347), GRPO (2402.03300), DAPO (2503.14476).
    """

    def loss(self, inputs, batch, metrics):
        log_ratio = token_log_ratio(inputs.logp, batch)
        metrics.mean("objective/ppo_kl", -log_ratio, batch.mask)
        return clipped_pg(log_ratio, batch.advantages[:, None], *self.window(), batch.mask, metrics)[0]


def seq_log_ratio(logp: torch.Tensor, batch: StepBatch) -> torch.Tensor:
    """GSPO's log s_i = mean over valid tokens of log(pi/pi_old), [b,1] fp32 (0 for an empty row)."""
    lengths = batch.mask.sum(-1, keepdim=True).clamp(min=1)
    return token_log_ratio(logp, batch).sum(-1, keepdim=True) / lengths


@register_part("surrogate", "gspo")
class GSPO(ClippedSurrogate):
    """GSPO sequence ratio (2507.18071): l_i = -min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i).

    s_i = exp(mean_t log(pi/pi_old)), gradient through the mean (TRL's ``importance_sampling_level=
    "sequence"``); log s_i is capped at 10 (verl's guard; no gradient where it binds). The row's loss is
    placed on each of its valid tokens, so ``seq_mean_token_mean`` aggregation gives (1/N) sum_i l_i, the
    paper's objective; token-mean aggregation would weight sequences by length. Clip fractions and ratio
    statistics are per sequence. Defaults are the paper's eps 3e-4 / 4e-4 (verl example scripts).
    """

    eps_low: float = 3e-4
    eps_high: float = 4e-4

    def loss(self, inputs, batch, metrics):
        log_s = seq_log_ratio(inputs.logp, batch).clamp(max=LOG_RHO_MAX)
        rows = (batch.mask.sum(-1, keepdim=True) > 0).float()
        loss, _ = clipped_pg(log_s, batch.advantages[:, None], *self.window(), rows, metrics)
        return loss.expand_as(batch.mask)


@register_part("surrogate", "gspo_token")
class GSPOToken(ClippedSurrogate):
    """GSPO-token (2507.18071): s_{i,t} = sg(s_i) * pi_t / sg(pi_t), token-level clip of s_{i,t}.

    Numerically s_{i,t} = s_i, and with one advantage per sequence its gradient equals GSPO's
    (both are s_i * mean_t grad log pi_t when unclipped). This is verl's ``gspo`` loss; log s capped at 10.
    """

    eps_low: float = 3e-4
    eps_high: float = 4e-4

    def loss(self, inputs, batch, metrics):
        logp = inputs.logp
        log_s = with_token_gradient(seq_log_ratio(logp, batch), logp).clamp(max=LOG_RHO_MAX)
        return clipped_pg(log_s, batch.advantages[:, None], *self.window(), batch.mask, metrics)[0]


@register_part("surrogate", "ctpo")
class CTPO(Surrogate):
    """CTPO cumulative token ratio (2605.07331) with position-adaptive clipping in log space.

    With d_t = clamp(logp_t - logp_old_t, +-20) on valid tokens (0 elsewhere) and the valid-token
    position t = 1..|o_i| (masked tokens such as tool output do not advance it):
        cumprod: log rho_t = sum_{t'<=t} d_t'            geomean: log rho_t = (1/t) sum_{t'<=t} d_t'
        log rho_t <- sg(log rho_t) + logp_t - sg(logp_t), then capped at 10 (zero gradient where capped)
        window  [-eps_low * t^p, eps_high * t^p] on log rho;  dual clip at c(t) = exp(eps_c * t^p), A < 0
    The prefix gets no gradient through rho (the paper's token-level PG form, as in the official code).
    Defaults follow ``ctpo.sh`` and the loss's own fallback: eps 0.025 / 0.05, eps_c 0.05, p = 0.5 (the
    ActorConfig's 0.0 would be a uniform window); geomean mode is recommended with p = -0.5.
    Metrics add the clip rate per position bucket [2^k, 2^(k+1)) (the paper's Fig. 1 diagnostic, which
    should be about flat) and the fraction of tokens at the overflow cap.
    """

    vanishes_at_zero_advantage = True

    mode: Literal["cumprod", "geomean"] = "cumprod"
    eps_low: float = Field(0.025, ge=0)
    eps_high: float = Field(0.05, gt=0)
    eps_c: float | None = Field(0.05, gt=0)
    power: float = 0.5

    def loss(self, inputs, batch, metrics):
        logp, m = inputs.logp, batch.mask
        position = fp32(m).cumsum(-1).clamp(min=1)
        log_ratio = token_log_ratio(logp, batch)
        metrics.mean("objective/ppo_kl", -log_ratio, m)
        cum = log_ratio.cumsum(-1)
        if self.mode == "geomean":
            cum = cum / position
        log_rho = with_token_gradient(cum, logp)
        metrics.mean("objective/ratio_at_cap_frac", (log_rho > LOG_RHO_MAX).float(), m)
        log_rho = log_rho.clamp(max=LOG_RHO_MAX)
        scale = position**self.power
        log_dual = None if self.eps_c is None else self.eps_c * scale
        loss, clipped = clipped_pg(
            log_rho, batch.advantages[:, None], -self.eps_low * scale, self.eps_high * scale, log_dual, m, metrics
        )
        self.log_by_position(clipped, position, m, metrics)
        return loss

    @staticmethod
    def log_by_position(clipped: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, metrics: Metrics):
        bucket = position.log2().floor()
        for k in torch.unique(bucket[mask > 0]).tolist():
            lo = 2 ** int(k)
            metrics.mean(f"objective/clip_frac_pos/{lo}-{2 * lo - 1}", clipped.float(), mask * (bucket == k))
