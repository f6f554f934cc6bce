"""Loss aggregation as per-token weights.

An aggregation returns W [B,T] such that the step's loss is sum(W * l). It receives the mask left by the
selection parts, so dropped tokens and rows leave every denominator. Normalisers (token counts, sequence
counts, group counts) are summed over every rank of the optimizer step, so the loss, and its gradient,
does not depend on how the batch is split into micro-batches or processes. Rows with no valid token
are excluded from sequence counts (verl's convention) and contribute nothing.
"""

from __future__ import annotations

import torch
from pydantic import Field

from rlkit.distributed import all_max, all_sum
from rlkit.metrics import Metrics
from rlkit.objectives.batch import StepBatch, group_index, group_sum
from rlkit.objectives.registry import Part, register_part


class Aggregation(Part):
    def weights(self, mask: torch.Tensor, batch: StepBatch, metrics: Metrics) -> torch.Tensor:
        raise NotImplementedError


def n_sequences(mask: torch.Tensor) -> torch.Tensor:
    """Number of rows with at least one valid token, over all ranks, at least 1."""
    return all_sum((mask.sum(-1) > 0).sum()).clamp(min=1)


@register_part("aggregation", "token_mean")
class TokenMean(Aggregation):
    """Mean over every valid token of the step: W = m / sum(m) (DAPO 2503.14476; verl's default)."""

    def weights(self, mask, batch, metrics):
        return mask / all_sum(mask.sum()).clamp(min=1)


@register_part("aggregation", "seq_mean_token_mean")
class SeqMeanTokenMean(Aggregation):
    """Token mean within each sequence, then mean over sequences: W = m / |o_i| / N_seq (GRPO 2402.03300)."""

    def weights(self, mask, batch, metrics):
        return mask / mask.sum(-1, keepdim=True).clamp(min=1) / n_sequences(mask)


@register_part("aggregation", "seq_mean_token_sum")
class SeqMeanTokenSum(Aggregation):
    """Token sum within each sequence, then mean over sequences: W = m / N_seq (verl)."""

    def weights(self, mask, batch, metrics):
        return mask / n_sequences(mask)


@register_part("aggregation", "seq_mean_token_sum_norm")
class SeqMeanTokenSumNorm(Aggregation):
    """Dr. GRPO's constant normaliser (2503.20783): W = m / (N_seq * C).

    C = ``norm``, a constant; set it to the generation budget (max_new_tokens), as TRL's ``dr_grpo`` does
    with ``max_completion_length``. If None, C is the padded completion length T of the step (largest over
    ranks), which is verl's fallback and is only constant when completions are padded to the budget.
    N_seq counts non-empty rows, like every sequence mode here (TRL divides by all rows B; they differ
    only when rows are emptied by masking or selection, whose rows should leave the denominator).
    """

    norm: float | None = Field(None, gt=0)  # W = m / (N_seq * C): a negative C would reverse the gradient

    def weights(self, mask, batch, metrics):
        norm = self.norm if self.norm is not None else all_max(mask.new_tensor(float(mask.shape[-1])))
        return mask / (n_sequences(mask) * norm)


@register_part("aggregation", "balanced")
class Balanced(Aggregation):
    """Balanced Aggregation (BA, 2605.04077): sign-balanced pooled token means within each group.

    A pooled token mean within each sign subset of a group, the subsets weighted by their share of the
    group's sequences, then a mean over groups:

        L_g = |P|/G_g * sum_{P} l / sum_{P} |o_i|  +  |N|/G_g * sum_{N} l / sum_{N} |o_i|,   L = mean_g L_g

    P = {A_i > zero_tol}, N = {A_i < -zero_tol}; G_g counts the group's non-empty rows *including*
    zero-advantage ones (the k/G reading, as in the third-party implementation); groups with no
    non-empty row leave the mean, all-zero-advantage groups stay in it (their L_g is 0). Unverified
    against the paper body (docs/objectives.md §9.1). With equal lengths it equals seq_mean_token_mean.
    ``zero_tol`` = 1e-8 treats float residue of mean-centring as zero. Groups are whole on a rank, so
    only the number of groups is summed over ranks. Logs the mean positive and negative lengths and
    their gap (the sign-length coupling that BA removes).
    """

    zero_tol: float = 1e-8

    def weights(self, mask, batch, metrics):
        lengths = mask.sum(-1)
        nonempty = lengths > 0
        gid, n_groups = group_index(batch.group_ids)
        per_group = lambda x: group_sum(x.to(mask.dtype), gid, n_groups)  # noqa: E731
        n_rows = per_group(nonempty)
        weights, side_stats = torch.zeros_like(mask), []
        for sign in (1.0, -1.0):
            side = (batch.advantages * sign > self.zero_tol) & nonempty
            side_tokens = torch.where(side, lengths, 0.0)
            coef = per_group(side) / n_rows.clamp(min=1) / per_group(side_tokens).clamp(min=1)
            weights = weights + torch.where(side[:, None], mask * coef[gid][:, None], 0.0)
            side_stats += [side.sum(), side_tokens.sum()]
        self.log_lengths(all_sum(torch.stack(side_stats).float()).tolist(), metrics)
        return weights / all_sum((n_rows > 0).sum()).clamp(min=1)

    @staticmethod
    def log_lengths(stats: list[float], metrics: Metrics) -> None:
        n_pos, tok_pos, n_neg, tok_neg = stats
        if n_pos and n_neg:
            metrics.mean("objective/ba_len_pos", tok_pos / n_pos)
            metrics.mean("objective/ba_len_neg", tok_neg / n_neg)
            metrics.mean("objective/ba_len_gap", tok_pos / n_pos - tok_neg / n_neg)
