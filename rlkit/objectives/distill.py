"""On-policy distillation (OPD): a frozen teacher scores the student's own rollouts.

Parts here (docs/objectives.md §5):

- surrogate ``opd_sampled``: sampled-token reverse KL used as a per-token advantage (Thinking Machines'
  on-policy distillation), importance-weighted, optionally clipped and mixed with the task advantage;
- surrogate ``distill``: a full-vocabulary divergence per token, GKD's generalised JSD(beta) with a
  temperature (beta = 0 forward KL, beta = 1 reverse KL), in token chunks in fp32;
- selection ``tip``: TIP's token selection (arXiv 2604.14084) by student entropy and teacher-student
  divergence, with batch-level normalisation over the whole optimizer step on all ranks.

Conventions: P_S = softmax(z_S / tau), P_T = softmax(z_T / tau) per position; KL(P||Q) = sum P (log P - log Q).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch.utils.checkpoint import checkpoint

from rlkit.distributed import all_gather_rows, all_sum
from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch, fp32
from rlkit.objectives.registry import Need, register_part
from rlkit.objectives.selection import Selection, decimal
from rlkit.objectives.surrogates import Surrogate, SurrogateInputs, clipped_pg, token_log_ratio

# ------------------------------------------------------------------------------------ divergences


def jsd(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD per row of log-probabilities ``s`` (student), ``t`` (teacher) [n,V] -> [n].

    GKD / TRL ``generalized_jsd_loss``: with M = (1-beta) P_S + beta P_T,
        JSD_beta = beta KL(P_T || M) + (1-beta) KL(P_S || M),
    and the endpoints special-cased (the mixture tends to 0, not to the KL, as beta -> 0 or 1):
        beta = 0: KL(P_T || P_S) (forward),   beta = 1: KL(P_S || P_T) (reverse).
    """
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), 0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def _chunk_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float, temperature: float) -> torch.Tensor:
    s = (student.float() / temperature).log_softmax(-1)
    t = (teacher.float() / temperature).log_softmax(-1)
    return jsd(s, t, beta)


def token_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor,
    keep: torch.Tensor,
    beta: float,
    temperature: float = 1.0,
    chunk: int = 512,
) -> torch.Tensor:
    """JSD_beta per token [b,T] (fp32, 0 where ``keep`` is False) from packed logits [n,V] of both models
    at the n True positions of ``keep`` [b,T] (row-major order).

    Computed ``chunk`` tokens at a time, each chunk under activation checkpointing: the fp32
    log-softmaxes of a chunk ([chunk,V] each) are freed after its forward and recomputed in the
    backward, so neither model's logits are ever copied to fp32 whole. The gradient flows into
    ``student`` only.
    """
    out = student.new_zeros(keep.shape, dtype=torch.float32)
    pieces = [
        checkpoint(_chunk_jsd, s, t, beta, temperature, use_reentrant=False)
        if s.requires_grad
        else _chunk_jsd(s, t, beta, temperature)
        for s, t in zip(student.split(chunk), teacher.detach().split(chunk))
    ]
    if not pieces:  # no active token: still a graph to the student (every rank's backward reaches every parameter)
        return out + 0 * student.sum()
    return out.index_put(keep.nonzero(as_tuple=True), torch.cat(pieces))


def entropy_and_divergences(student: torch.Tensor, teacher: torch.Tensor, chunk: int = 512) -> dict[str, torch.Tensor]:
    """No-grad per-token statistics [b,T] (fp32) from logits [b,T,V], computed ``chunk`` tokens at a time.

    h = H(P_S) / log V (TIP Eq. 2, in [0,1]); rkl = KL(P_S || P_T) (TIP's delta, Eq. 3);
    fkl = KL(P_T || P_S) (Q3 ranking); agree = 1 where both models' most likely tokens coincide.
    """
    b, T, V = student.shape
    s_all, t_all = student.reshape(b * T, V), teacher.reshape(b * T, V)
    parts: dict[str, list[torch.Tensor]] = {"h": [], "rkl": [], "fkl": [], "agree": []}
    with torch.no_grad():
        for s, t in zip(s_all.split(chunk), t_all.split(chunk)):
            s, t = s.float().log_softmax(-1), t.float().log_softmax(-1)
            parts["h"].append(-(s.exp() * s).sum(-1) / math.log(V))
            parts["rkl"].append(jsd(s, t, 1.0))
            parts["fkl"].append(jsd(s, t, 0.0))
            parts["agree"].append((s.argmax(-1) == t.argmax(-1)).float())
    return {k: torch.cat(v).view(b, T) for k, v in parts.items()}


# ------------------------------------------------------------------------------------- surrogates


@register_part("surrogate", "opd_sampled")
class OPDSampled(Surrogate):
    """Sampled-token reverse KL as a per-token advantage (on-policy distillation, Thinking Machines).

        A_t = -coef * sg(log pi_old(y_t) - log pi_T(y_t)) + reward_coef * A_i
        l_t = -min(r_t A_t, clip(r_t, 1-eps_low, 1+eps_high) A_t),   r_t = pi(y_t) / pi_old(y_t)

    On-policy (no ``logp_old``) pi_old = sg(pi): r = 1 and the gradient is -A_t grad log pi(y_t), whose
    expectation over y_t ~ pi is grad KL(pi || pi_T) per position (E[grad log pi] = 0). The log-ratio is
    never backpropagated directly: its expected gradient is 0. ``eps_low``/``eps_high`` None: no clip
    (Tinker's plain importance-sampling loss). ``reward_coef`` mixes in the task's advantage A_i [b].
    """

    needs = frozenset({Need.LOGP_OLD, Need.LOGP_TEACHER})
    coef: float = Field(1.0, ge=0)  # negative: away from the teacher
    reward_coef: float = Field(0.0, ge=0)  # negative: against the task reward
    eps_low: float | None = None
    eps_high: float | None = None

    def loss(self, inputs, batch, metrics):
        logp = inputs.logp
        old = logp.detach() if batch.logp_old is None else batch.logp_old
        gap = torch.where(batch.mask > 0, fp32(old) - fp32(batch.logp_teacher), 0.0)
        adv = -self.coef * gap + self.reward_coef * fp32(batch.advantages)[:, None]
        metrics.mean("objective/opd_sampled_rkl", gap, batch.mask)
        lo = -math.inf if self.eps_low is None else math.log1p(-self.eps_low)
        hi = math.inf if self.eps_high is None else math.log1p(self.eps_high)
        return clipped_pg(token_log_ratio(logp, batch), adv, lo, hi, None, batch.mask, metrics)[0]

    def reads_advantages(self) -> bool:
        return self.reward_coef != 0


@register_part("surrogate", "distill")
class Distill(Surrogate):
    """Full-vocabulary divergence to the teacher per token: GKD's generalised JSD(beta) (2306.13649).

        l_t = JSD_beta(P_S(.|c_t), P_T(.|c_t)),   P = softmax(logits / temperature)
        beta = 0: KL(P_T || P_S) (forward), beta = 1: KL(P_S || P_T) (reverse, TIP's OPD loss), else the
        mixture divergence with M = (1-beta) P_S + beta P_T (TRL's convention).

    Needs the student's logits with gradient and the teacher's logits on the same rows
    ("student_logits"), packed [n,V] at the micro-batch's active tokens (weight non-zero), so dropped
    tokens are never projected to the vocabulary; computed ``chunk`` tokens at a time in fp32
    (:func:`token_divergence`). Defaults: reverse KL at temperature 1 (TIP, TRL's DistillationConfig),
    chunk 512 (TIP Table 9). Logs the divergence and the top-1 agreement of the two models on those tokens.
    """

    needs = frozenset({Need.STUDENT_LOGITS})
    beta: float = Field(1.0, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    chunk: int = Field(512, ge=1)

    def reads_advantages(self) -> bool:
        return False

    def loss(self, inputs: SurrogateInputs, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        """Per-token loss [b,T] from the student's logits [n,V] (with gradient) and the teacher's [n,V],
        packed at the n True entries of ``inputs.positions`` [b,T]."""
        logits, teacher_logits, keep = inputs.logits, inputs.teacher_logits, inputs.positions
        if logits is None or teacher_logits is None or keep is None:
            raise ValueError(
                f"the {self.name} surrogate needs the student's and the teacher's logits: call Objective.loss "
                "with logits and teacher_logits"
            )
        loss = token_divergence(logits, teacher_logits, keep, self.beta, self.temperature, self.chunk)
        metrics.mean("objective/distill_div_kept", loss.detach(), keep.float())
        with torch.no_grad():
            metrics.mean("objective/teacher_agree_kept", (logits.argmax(-1) == teacher_logits.argmax(-1)).float())
        return loss


# --------------------------------------------------------------------------------------- TIP selection


def step_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of a 1-D tensor, linear interpolation between order statistics (torch.quantile's
    rule, with a sort, so there is no 2^24 size limit). The position q (n - 1) is exact (see
    :func:`rlkit.objectives.selection.decimal`), so a whole one gives that order statistic itself."""
    v = values.sort().values
    pos = decimal(q) * (v.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + float(pos - lo) * (v[hi] - v[lo])


def min_max(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(x - lo) / (hi - lo), the span clamped at 1e-8: a degenerate step (hi = lo) scores 0 everywhere."""
    return (x - lo) / (hi - lo).clamp(min=1e-8)


def top_per_row(score: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """0/1 mask keeping each row's k = max(1, floor(rho * m)) highest-scoring valid tokens [b,T].

    m = the row's valid tokens (empty rows keep nothing); k is exact (see
    :func:`rlkit.objectives.selection.decimal`; in float32 0.13 * 900 is 116.99999). Ties go to the
    earlier position (a stable sort), so the choice depends on the row alone, whatever the layout of
    rows over ranks.
    """
    valid = mask > 0
    k = torch.tensor(
        [max(1, math.floor(decimal(rho) * m)) if m else 0 for m in valid.sum(-1).tolist()], device=mask.device
    )
    order = torch.where(valid, score, -torch.inf).sort(dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order).contiguous()
    )
    return torch.where(valid & (rank < k[:, None]), mask, 0.0)


@register_part("selection", "tip")
class TIP(Selection):
    """TIP token selection (Xu et al., arXiv 2604.14084): keep the tokens where distillation teaches.

    From the no-grad scoring pass: h = H(P_S)/log V, rkl = KL(P_S||P_T), fkl = KL(P_T||P_S) per token.
    Over the whole optimizer step on all ranks: h is clipped at its 98th percentile, then h^ and
    rkl^ = min-max normalised (span clamped at 1e-8). Each rollout keeps k = max(1, floor(rho m)) of its
    m valid tokens by

        soft_or: s = h^ + d^ - h^ d^             (Eq. 7-9; rho 0.5 or 0.2)
        q3:      s = fkl * (1 - h^)              (low entropy, high divergence; rho 0.1-0.2)
        entropy: k tokens sampled without replacement with p proportional to h (Gumbel top-k; Table 3)

    Dropped tokens leave every normaliser, so any aggregation gives the paper's token mean over kept
    tokens with ``token_mean``. Metrics: quadrant shares Q1-Q4 (h^ and d^ split at 0.5), the reverse KL
    over all valid tokens and over the kept ones, the teacher-student top-1 agreement, kept fraction.
    """

    needs = frozenset({Need.LOGITS, Need.TEACHER_LOGITS})
    rule: Literal["soft_or", "q3", "entropy"] = "soft_or"
    rho: float = Field(0.5, gt=0, le=1)
    clip_quantile: float = Field(0.98, gt=0, le=1)
    chunk: int = Field(512, ge=1)
    seed: int = 0

    def on_logits(self, logits, completion_ids, mask, group_ids=None, teacher_logits=None):
        stats = entropy_and_divergences(logits, teacher_logits, self.chunk)
        return {f"tip_{k}": v for k, v in stats.items()}

    def select(self, mask, batch, metrics):
        valid = mask > 0
        h, rkl, fkl = (batch.extras[f"tip_{k}"].float() for k in ("h", "rkl", "fkl"))
        # flattened valid values: ranks may pad their completions to different lengths
        h_all, _ = all_gather_rows(h[valid])
        d_all, _ = all_gather_rows(rkl[valid])
        if h_all.numel() == 0:
            return mask
        h_cap = step_quantile(h_all, self.clip_quantile)
        h_hat = min_max(h.clamp(max=h_cap), h_all.min(), h_cap)
        d_hat = min_max(rkl, d_all.min(), d_all.max())
        if self.rule == "soft_or":
            out = top_per_row(h_hat + d_hat - h_hat * d_hat, mask, self.rho)
        elif self.rule == "q3":
            out = top_per_row(fkl * (1 - h_hat), mask, self.rho)
        else:
            first_row = all_gather_rows(mask[:, :1])[1].start  # this rank's first row in the step
            out = top_per_row(self.gumbel_keys(h, first_row, batch.progress), mask, self.rho)
        self.log(h_hat, d_hat, rkl, batch.extras["tip_agree"], mask, out, metrics)
        return out

    def gumbel_keys(self, h: torch.Tensor, first_row: int, progress: float) -> torch.Tensor:
        """log h + Gumbel noise [b,T]: the top k of a row's keys is a sample of k tokens without
        replacement with p proportional to h. Row i's noise comes from a CPU generator seeded by (seed,
        training progress, the row's index in the step), so it is the same for any layout of rows over
        ranks and any padded length."""
        noise = []
        for i in range(h.shape[0]):
            gen = torch.Generator().manual_seed(hash((self.seed, round(progress * 1e6), first_row + i)) % 2**63)
            u = torch.rand(h.shape[1], generator=gen, dtype=torch.float64)
            noise.append(-(-u.clamp(min=1e-300).log()).log())
        return h.double().clamp(min=1e-30).log() + torch.stack(noise).to(h.device)

    @staticmethod
    def log(h_hat, d_hat, rkl, agree, mask, kept, metrics: Metrics) -> None:
        high_h, high_d = h_hat > 0.5, d_hat > 0.5
        quadrants = (high_h & high_d, high_h & ~high_d, ~high_h & high_d, ~high_h & ~high_d)
        m = mask
        stats = all_sum(
            torch.stack(
                [
                    m.sum(),
                    kept.sum(),
                    (rkl * m).sum(),
                    (rkl * kept).sum(),
                    (agree * m).sum(),
                    *[(q * m).sum() for q in quadrants],
                ]
            ).double()
        )
        n, n_kept = stats[0].clamp(min=1), stats[1].clamp(min=1)
        metrics.mean("objective/tip_kept_token_frac", float(stats[1] / n))
        metrics.mean("objective/tip_rkl_all", float(stats[2] / n))
        metrics.mean("objective/tip_rkl_kept", float(stats[3] / n_kept))
        metrics.mean("objective/teacher_agree_all", float(stats[4] / n))
        for i in range(4):
            metrics.mean(f"objective/tip_q{i + 1}_frac", float(stats[5 + i] / n))
