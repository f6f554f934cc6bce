"""Sample and token selection: parts that drop rows or tokens (a 0/1 mask) before aggregation.

A selection part maps the current mask [B,T] to a new one; parts run in recipe order, each seeing the
previous one's mask. Dropped tokens leave every normaliser. Rules that rank samples or tokens against
each other rank them over the whole optimizer step on all ranks (``all_gather_rows``), so the selection
does not depend on micro-batching. Ties:

- token top-K keeps every token whose score equals the K-th largest (so ties may keep a few more than
  K), which depends on values only and is the same for any layout of rows over ranks;
- the maximum-variance subset of samples must have exactly N members and ties are the rule there
  (binary rewards give equal advantages): equal variances go to the larger sum of |A|
  (:func:`max_var_subset`), equal values by the row order of the step, where rows on several ranks are
  ordered rank by rank (``all_gather_rows``). A trainer that shards groups across ranks in contiguous
  blocks therefore gets the same subset as one process.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import accumulate
from typing import Literal

import torch

from rlkit.distributed import all_gather_rows, all_sum
from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch, group_has_signal, group_index, group_sum
from rlkit.objectives.registry import Need, Part, RolloutFilter, register_part


class Selection(Part):
    def select(self, mask: torch.Tensor, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        raise NotImplementedError


def keep_rows(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.where(rows[:, None], mask, 0.0)


def log_kept_rows(name: str, before: torch.Tensor, after: torch.Tensor, metrics: Metrics) -> None:
    """Fraction of non-empty rows that are still non-empty, over all ranks."""
    kept, total = all_sum(torch.stack([(after.sum(-1) > 0).sum(), (before.sum(-1) > 0).sum()]).float())
    metrics.mean(f"objective/{name}_kept_seq_frac", float(kept / total.clamp(min=1)))


def decimal(x: float) -> Fraction:
    """``x`` as the decimal it prints as: 0.07 is 7/100, not the double just above it. Counts that are a
    fraction of n are computed from it exactly: in floats 0.07 * 100 is 7.000000000000001 (its ceil is
    8) and 0.29 * 50 is 14.499999999999998 (rounded, 14)."""
    return Fraction(repr(x))


def linear_schedule(start: float, end: float, progress: float) -> float:
    """(1-p) * start + p * end, p clamped to [0, 1] (D3S's schedule over training progress), computed on
    the decimals so that a round value stays round (0.25 -> 0.75 at p = 0.6 is 0.55, where floats give
    0.5499999999999999): the float returned prints as the exact result whenever that is a short decimal."""
    p = min(max(decimal(progress), Fraction(0)), Fraction(1))
    return float((1 - p) * decimal(start) + p * decimal(end))


# --------------------------------------------------------------------------------------- truncation


@register_part("selection", "mask_truncated")
class MaskTruncated(Selection):
    """Drops completions truncated at the token budget (DAPO overlong filtering).

    As TRL ``mask_truncated_completions``. Reads ``StepBatch.truncated`` [B] (no EOS within
    max_new_tokens); the rows become empty and leave the denominators.
    """

    def select(self, mask, batch, metrics):
        if batch.truncated is None:
            raise ValueError("mask_truncated needs StepBatch.truncated")
        out = keep_rows(mask, ~batch.truncated.bool())
        log_kept_rows("truncation", mask, out, metrics)
        return out


# --------------------------------------------------------------------------------- dynamic sampling


@register_part("selection", "dynamic_sampling")
class DynamicSampling(Selection):
    """DAPO dynamic sampling (2503.14476): groups without learning signal leave the step.

    In ``prepare`` (both modes) a group whose advantages are all 0 (its rewards all equal, tested once by
    :func:`group_has_signal`, which also makes those advantages exactly 0; singletons too) is masked out,
    so its tokens and rows leave every denominator instead of diluting the step: the cheap mask-only
    mode (docs/objectives.md §1.5), with a batch size that varies. With ``mode: refill`` the part also
    asks the trainer to regenerate (:meth:`rollout_filter`): groups without signal are replaced by fresh
    ones until the step holds its number of prompts or ``max_rounds`` rounds ran (<= 0: unlimited); at
    the cap it trains on what it kept (verl raises instead), and the mask handles the rest.
    """

    mode: Literal["mask", "refill"] = "mask"
    max_rounds: int = 10

    def rollout_filter(self):
        return RolloutFilter(keep=group_has_signal, max_rounds=self.max_rounds) if self.mode == "refill" else None

    def select(self, mask, batch, metrics):
        index, n_groups = group_index(batch.group_ids)
        signal = group_sum((batch.advantages != 0).double(), index, n_groups) > 0
        kept, total = all_sum(torch.stack([signal.sum().double(), signal.new_tensor(n_groups, dtype=torch.double)]))
        metrics.mean("objective/dynamic_sampling_kept_group_frac", float(kept / total.clamp(min=1)))
        return keep_rows(mask, signal[index])


# ----------------------------------------------------------------------------------- D3S samples


def max_var_subset(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of a size-n subset of ``values`` [M] with the largest (population) variance.

    Such a subset is always the a lowest plus the n-a highest values for some a (PODS, 2504.13818,
    Lemma 3.1), so one stable sort and a scan over a with prefix sums find it in O(M log M). Ties are
    common (binary rewards give two advantage values; every one-element subset has variance 0), so the
    sums are exact (doubles are rationals) and not rounding noise pick among equal variances: the
    larger sum of |A| wins (one row kept from a group is its largest |A|, not always its best row), then
    the smallest a. Equal values are taken in their order in ``values``.
    """
    m = values.numel()
    if n >= m:
        return torch.arange(m, device=values.device)
    v, order = torch.sort(values.double(), stable=True)
    exact = [Fraction(x) for x in v.tolist()]
    c1 = list(accumulate(exact, initial=Fraction(0)))
    c2 = list(accumulate((x * x for x in exact), initial=Fraction(0)))
    c_abs = list(accumulate((abs(x) for x in exact), initial=Fraction(0)))

    def subset_sum(c: list[Fraction], a: int) -> Fraction:
        return c[a] + c[m] - c[m - n + a]

    def rank(a: int) -> tuple:  # n^2 Var, then sum |A|, then the smaller a
        return n * subset_sum(c2, a) - subset_sum(c1, a) ** 2, subset_sum(c_abs, a), -a

    best = max(range(n + 1), key=rank)
    return torch.cat([order[:best], order[m - n + best :]])


def subset_size(fraction: float, m: int) -> int:
    """round(fraction * m), halves up, at least 1 when m > 0 (exact: see :func:`decimal`)."""
    return min(m, max(1, math.floor(decimal(fraction) * m + Fraction(1, 2)))) if m else 0


@register_part("selection", "d3s_sample")
class D3SSample(Selection):
    """D3S sample level (2509.22115): keep the N samples whose advantages have the largest variance.

    S = argmax_{|S| = N} Var(A_S), over the whole step (``cross_group``, D3S's default; advantages are
    group-normalised and not re-normalised) or within each group (D3S-I). N = round(f * M) where M is the
    number of candidate (non-empty) rows, of the step or of the group, and the fraction f follows the
    linear schedule f = (1-p) keep_init + p keep_final over training progress p. Kept rows with A = 0
    are dropped too (they would only dilute the denominators). The paper's N values are not public
    (docs/objectives.md §9.3): the defaults 0.25 -> 0.75 (aggressive early, relaxed late, as the paper
    describes) are rlkit's; N as a fraction keeps the rule independent of batch size and world size.
    Logs the current fraction, the kept fraction, and Var(A) of the kept vs all candidate rows.
    """

    keep_init: float = 0.25
    keep_final: float = 0.75
    cross_group: bool = True

    def select(self, mask, batch, metrics):
        fraction = linear_schedule(self.keep_init, self.keep_final, batch.progress)
        candidate = mask.sum(-1) > 0
        keep = (
            self.cross_group_keep(batch.advantages, candidate, fraction)
            if self.cross_group
            else self.in_group_keep(batch.advantages, candidate, batch.group_ids, fraction)
        )
        keep &= batch.advantages != 0
        metrics.mean("objective/d3s_sample_frac", fraction)
        self.log_variance(batch.advantages, candidate, keep, metrics)
        out = keep_rows(mask, keep)
        log_kept_rows("d3s", mask, out, metrics)
        return out

    @staticmethod
    def cross_group_keep(adv, candidate, fraction):
        every, mine = all_gather_rows(torch.stack([adv.double(), candidate.double()], -1))
        pool = every[:, 1].nonzero().squeeze(-1)
        chosen = pool[max_var_subset(every[pool, 0], subset_size(fraction, pool.numel()))]
        keep = torch.zeros(every.shape[0], dtype=torch.bool, device=every.device)
        keep[chosen] = True
        return keep[mine]

    @staticmethod
    def in_group_keep(adv, candidate, group_ids, fraction):
        keep = torch.zeros_like(candidate)
        for g in torch.unique(group_ids):
            pool = ((group_ids == g) & candidate).nonzero().squeeze(-1)
            keep[pool[max_var_subset(adv[pool], subset_size(fraction, pool.numel()))]] = True
        return keep

    @staticmethod
    def log_variance(adv, candidate, keep, metrics):
        a = adv.double()
        stats = all_sum(
            torch.stack(
                [s for rows in (candidate, keep) for s in (rows.sum(), (a * rows).sum(), (a * a * rows).sum())]
            ).double()
        )
        for name, (n, s1, s2) in zip(("all", "kept"), stats.view(2, 3).tolist()):
            if n:
                metrics.mean(f"objective/d3s_adv_var_{name}", s2 / n - (s1 / n) ** 2)


# -------------------------------------------------------------------------------------- token top-K


def top_fraction(score: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of the top ``ceil(fraction * n)`` valid tokens by ``score`` over the whole step on all
    ranks (n = valid tokens of the step, at least 1 kept, the count exact: see :func:`decimal`); ties
    with the K-th score are all kept."""
    valid = mask > 0
    every, _ = all_gather_rows(score.float()[valid])
    if every.numel() == 0:
        return mask
    k = min(every.numel(), max(1, math.ceil(decimal(fraction) * every.numel())))
    threshold = torch.topk(every, k).values[-1]
    return torch.where(valid & (score.float() >= threshold), mask, 0.0)


class TopTokens(Selection):
    """Shared by token rules that keep the top fraction of tokens by a score."""

    needs = frozenset({Need.ENTROPY})

    def keep_tokens(self, name, score, mask, fraction, metrics):
        out = top_fraction(score, mask, fraction)
        kept, total = all_sum(torch.stack([out.sum(), mask.sum()]).double())
        metrics.mean(f"objective/{name}_kept_token_frac", float(kept / total.clamp(min=1)))
        return out


@register_part("selection", "d3s_token")
class D3SToken(TopTokens):
    """D3S token level (2509.22115): keep the top-K fraction of valid tokens by |A_i| * H_{i,t}.

    H is the policy entropy at rollout time (``StepBatch.entropy``, the no-grad scoring pass, as
    docs/objectives.md §4 recommends); top-K is pooled over every valid token of the step (not per sequence;
    the paper is silent). K = (1-p) K_init + p K_final over training progress p. The paper's values are
    not public: the defaults 0.2 -> 0.6 are rlkit's, with D3S's early-aggressive schedule. Logs K.
    """

    k_init: float = 0.2
    k_final: float = 0.6

    def select(self, mask, batch, metrics):
        fraction = linear_schedule(self.k_init, self.k_final, batch.progress)
        metrics.mean("objective/d3s_token_frac", fraction)
        score = batch.advantages.abs()[:, None] * batch.entropy
        return self.keep_tokens("d3s", score, mask, fraction, metrics)


@register_part("selection", "top_entropy")
class TopEntropy(TopTokens):
    """Keeps the highest-entropy fraction of the step's valid tokens (2506.01939).

    The "forking tokens" rule of Wang et al., who keep the top 20%. H is the policy entropy at rollout
    time; the fraction is pooled over every valid token of the step on all ranks.
    """

    fraction: float = 0.2

    def select(self, mask, batch, metrics):
        return self.keep_tokens("top_entropy", batch.entropy, mask, self.fraction, metrics)
