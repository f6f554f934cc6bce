"""Aggregations: weights by hand, BA against a slow loop, and the identities of docs/objectives.md §8."""

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import StepBatch, SurrogateInputs, build_part

D = torch.double


def weights_of(kind, mask, adv=None, groups=None, **options):
    mask = torch.tensor(mask, dtype=D)
    b = mask.shape[0]
    batch = StepBatch(
        mask=mask,
        advantages=torch.zeros(b, dtype=D) if adv is None else torch.tensor(adv, dtype=D),
        group_ids=torch.zeros(b, dtype=torch.long) if groups is None else torch.tensor(groups),
    )
    metrics = Metrics()
    return build_part("aggregation", {"type": kind, **options}).weights(mask, batch, metrics), metrics.result()


MASK = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]  # lengths 2, 1 and an empty row


@pytest.mark.parametrize(
    "kind,options,expected",
    [
        ("token_mean", {}, [[1 / 3, 1 / 3, 0], [1 / 3, 0, 0], [0, 0, 0]]),
        ("seq_mean_token_mean", {}, [[1 / 4, 1 / 4, 0], [1 / 2, 0, 0], [0, 0, 0]]),  # 1/|o_i| / 2 sequences
        ("seq_mean_token_sum", {}, [[1 / 2, 1 / 2, 0], [1 / 2, 0, 0], [0, 0, 0]]),
        ("seq_mean_token_sum_norm", {"norm": 4}, [[1 / 8, 1 / 8, 0], [1 / 8, 0, 0], [0, 0, 0]]),
        ("seq_mean_token_sum_norm", {}, [[1 / 6, 1 / 6, 0], [1 / 6, 0, 0], [0, 0, 0]]),  # C = T = 3
    ],
)
def test_aggregation_weights_by_hand(kind, options, expected):
    w, _ = weights_of(kind, MASK, **options)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=D), rtol=1e-12, atol=0)


def test_all_masked_weights_are_zero_and_finite():
    for kind in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "balanced"):
        w, _ = weights_of(kind, [[0, 0], [0, 0]], adv=[1.0, -1.0])
        assert torch.equal(w, torch.zeros(2, 2, dtype=D))


def test_balanced_by_hand():
    # group 0: A = (1, 1, -1, 0), lengths (2, 4, 3, 1): G=4; P: 2/4 over 6 tokens = 1/12 per token;
    #          N: 1/4 over 3 tokens = 1/12; the zero row counts in G but gets no weight
    # group 5: A = (2, -1, -1, -1), lengths (1, 1, 2, 0): the empty row leaves G=3; P: 1/3 over 1 token;
    #          N: 2/3 over 3 tokens = 2/9
    # group 2: A = (0, 0), lengths (1, 2): no weight, but it counts among the 3 groups
    lengths = [2, 4, 3, 1, 1, 1, 2, 0, 1, 2]
    mask = [[1] * n + [0] * (4 - n) for n in lengths]
    adv = [1, 1, -1, 0, 2, -1, -1, -1, 0, 0]
    groups = [0, 0, 0, 0, 5, 5, 5, 5, 2, 2]
    w, m = weights_of("balanced", mask, adv, groups)
    per_token = [1 / 12, 1 / 12, 1 / 12, 0, 1 / 3, 2 / 9, 2 / 9, 0, 0, 0]
    expected = torch.tensor(mask, dtype=D) * torch.tensor(per_token, dtype=D)[:, None] / 3
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=0)
    # positive lengths (2, 4, 1) mean 7/3; negative (3, 1, 2) mean 2 (the empty row is no sample)
    assert m["objective/ba_len_pos"] == pytest.approx(7 / 3) and m["objective/ba_len_neg"] == pytest.approx(2.0)
    assert m["objective/ba_len_gap"] == pytest.approx(1 / 3)


def ba_loop(loss, mask, adv, groups):
    """L_BA = mean over groups of sum over signs of |S|/G_g * (sum of l over S) / (tokens of S)."""
    total, n_groups = 0.0, 0
    for g in sorted(set(groups.tolist())):
        rows = [i for i in range(len(adv)) if groups[i] == g and mask[i].sum() > 0]
        if not rows:
            continue
        n_groups += 1
        for side in ([i for i in rows if adv[i] > 0], [i for i in rows if adv[i] < 0]):
            if side:
                tokens = sum(float(mask[i].sum()) for i in side)
                total += len(side) / len(rows) * sum(float((loss[i] * mask[i]).sum()) for i in side) / tokens
    return total / n_groups


def test_balanced_matches_slow_loop_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        b, t = 24, 6
        mask = (torch.arange(t)[None] < torch.randint(0, t + 1, (b,), generator=gen)[:, None]).double()
        adv = torch.randint(-2, 3, (b,), generator=gen).double()
        groups = torch.randint(0, 5, (b,), generator=gen)
        loss = torch.randn(b, t, generator=gen, dtype=D)
        w = build_part("aggregation", {"type": "balanced"}).weights(
            mask, StepBatch(mask=mask, advantages=adv, group_ids=groups), Metrics()
        )
        assert float((w * loss).sum()) == pytest.approx(ba_loop(loss, mask, adv, groups), rel=1e-12)


def equal_length_case(seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = 12, 5
    mask = torch.ones(b, t, dtype=D)
    mask[:, 4] = 0  # every length 4
    adv = torch.randn(b, generator=gen, dtype=D)
    adv[[2, 7]] = 0.0
    logp = -torch.rand(b, t, generator=gen, dtype=D)
    batch = StepBatch(
        mask=mask,
        advantages=adv,
        group_ids=torch.arange(3).repeat_interleave(4),
        logp_old=logp + 0.1 * torch.randn(b, t, generator=gen, dtype=D),
    )
    loss = build_part("surrogate", {"type": "ppo_clip"}).loss(SurrogateInputs(logp), batch, Metrics())  # 0 where A = 0
    return mask, batch, loss


@pytest.mark.parametrize("seed", range(3))
def test_balanced_equals_seq_mean_token_mean_when_lengths_are_equal(seed):
    mask, batch, loss = equal_length_case(seed)
    ba = build_part("aggregation", {"type": "balanced"}).weights(mask, batch, Metrics())
    seq = build_part("aggregation", {"type": "seq_mean_token_mean"}).weights(mask, batch, Metrics())
    assert float((ba * loss).sum()) == pytest.approx(float((seq * loss).sum()), rel=1e-12)


def test_token_mean_equals_seq_mean_token_mean_when_lengths_are_equal():
    mask, batch, _ = equal_length_case(0)
    tok = build_part("aggregation", {"type": "token_mean"}).weights(mask, batch, Metrics())
    seq = build_part("aggregation", {"type": "seq_mean_token_mean"}).weights(mask, batch, Metrics())
    torch.testing.assert_close(tok, seq, rtol=1e-12, atol=0)
