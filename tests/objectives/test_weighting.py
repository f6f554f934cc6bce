"""TW-GRPO weights against a slow, fully materialised reference written like the original code."""

import math

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import StepBatch, build_part

D = torch.double


def reference_weights(logits, mask, groups, alpha, minmax_active):
    """lp [B,T,V] materialised; per group: D_t = mean_i sum_v k3(mbar - lp_i), min-max over positions."""
    b, t, v = logits.shape
    lp = logits.log_softmax(-1)
    lp = torch.where(mask[..., None] > 0, lp, torch.full_like(lp, -math.log(v)))
    w = torch.ones(b, t, dtype=D)
    for g in set(groups.tolist()):
        rows = [i for i in range(b) if groups[i] == g]
        mean = lp[rows].mean(0)
        div = [
            sum(float(((x := (mean[j] - lp[i, j]).clamp(-11, 11)).exp() - x - 1).sum()) for i in rows) / len(rows)
            for j in range(t)
        ]
        positions = [j for j in range(t) if mask[rows, j].sum() > 0] if minmax_active else range(t)
        lo, hi = min(div[j] for j in positions), max(div[j] for j in positions)
        for i in rows:
            for j in range(t):
                w[i, j] = 1 + (alpha - 1) * (div[j] - lo) / (hi - lo + 1e-8)
    return w


@pytest.mark.parametrize("normalise", ["max", "minmax"])
def test_tw_grpo_weights_match_reference(normalise):
    gen = torch.Generator().manual_seed(0)
    b, t, v = 6, 5, 7
    logits = 2 * torch.randn(b, t, v, generator=gen, dtype=D)
    lengths = torch.tensor([4, 2, 3, 1, 4, 2])  # every group has an all-padding last position
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    groups = torch.tensor([5, 2, 5, 2, 5, 2])  # interleaved, arbitrary labels
    part = build_part("weighting", {"type": "tw_grpo", "alpha": 1.7, "vocab_chunk": 3, "normalise": normalise})
    extras = part.on_logits(logits, torch.zeros(b, t, dtype=torch.long), mask, groups)
    batch = StepBatch(mask=mask, advantages=torch.ones(b, dtype=D), group_ids=groups, extras=extras)
    base = torch.rand(b, t, generator=gen, dtype=D) * mask
    metrics = Metrics()
    weights = part.weigh(base, mask, batch, metrics)
    # with an all-padding position the reference code's min-max (over all positions, min 0) is "max"
    expected = reference_weights(logits, mask, groups, 1.7, minmax_active=normalise == "minmax")
    torch.testing.assert_close(weights, base * expected, rtol=1e-6, atol=1e-9)
    assert (
        1.0 <= metrics.result()["objective/tw_weight_mean"] <= metrics.result()["objective/tw_weight_max"] <= 1.7 + 1e-6
    )
    assert metrics.result()["objective/tw_weight_max"] > 1.6  # some position of a group reaches alpha


def test_tw_grpo_is_one_for_identical_rollouts_and_needs_group_ids():
    part = build_part("weighting", {"type": "tw_grpo"})
    logits = torch.randn(1, 3, 5, dtype=D).expand(4, 3, 5)
    mask = torch.ones(4, 3, dtype=D)
    extras = part.on_logits(logits, torch.zeros(4, 3, dtype=torch.long), mask, torch.zeros(4, dtype=torch.long))
    batch = StepBatch(
        mask=mask, advantages=torch.ones(4, dtype=D), group_ids=torch.zeros(4, dtype=torch.long), extras=extras
    )
    assert torch.equal(part.weigh(mask, mask, batch, Metrics()), mask)  # D = 0 everywhere -> weight 1
    with pytest.raises(ValueError, match="group ids"):
        part.on_logits(logits, torch.zeros(4, 3, dtype=torch.long), mask)
