"""Selection parts: max-variance subset vs brute force, D3S and top-K by hand, dynamic sampling, truncation."""

import itertools

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import StepBatch, build_part
from rlkit.objectives.selection import max_var_subset, subset_size

D = torch.double


def variance(values):
    return float(values.var(unbiased=False))


@pytest.mark.parametrize("seed", range(20))
def test_max_var_subset_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 9, (1,), generator=gen))
    values = torch.randn(m, generator=gen, dtype=D) if seed % 2 else torch.randint(-1, 2, (m,), generator=gen).double()
    for n in range(1, m + 1):
        chosen = max_var_subset(values, n)
        subsets = [list(c) for c in itertools.combinations(range(m), n)]
        best = max(variance(values[c]) for c in subsets)
        assert len(set(chosen.tolist())) == n
        assert variance(values[chosen]) == pytest.approx(best, rel=1e-12, abs=1e-15)
        # among the subsets of that variance, one with the largest sum of |A| (the tie rule)
        tied = [c for c in subsets if variance(values[c]) == pytest.approx(best, rel=1e-12, abs=1e-15)]
        assert float(values[chosen].abs().sum()) == pytest.approx(max(float(values[c].abs().sum()) for c in tied))


def test_max_var_subset_breaks_ties_by_abs_advantage():
    # one kept value: every choice has variance 0; the largest |A| is kept, here the only negative one
    assert max_var_subset(torch.tensor([0.5, 0.5, 0.5, -1.5], dtype=D), 1).tolist() == [3]
    # three of four 0.5 and two -1.5: {-1.5, .5, .5} and {-1.5, -1.5, .5} both have variance 8/9;
    # sums of |A| 2.5 and 3.5
    assert sorted(max_var_subset(torch.tensor([0.5] * 4 + [-1.5] * 2, dtype=D), 3).tolist()) == [3, 4, 5]
    # equal |A| as well: the smallest a, i.e. the highest values
    assert max_var_subset(torch.tensor([-1.0, 1.0], dtype=D), 1).tolist() == [1]


def select(kind, mask, adv=None, groups=None, entropy=None, truncated=None, progress=0.0, **options):
    mask = torch.tensor(mask, dtype=D)
    b = mask.shape[0]
    batch = StepBatch(
        mask=mask,
        advantages=torch.zeros(b, dtype=D) if adv is None else torch.tensor(adv, dtype=D),
        group_ids=torch.zeros(b, dtype=torch.long) if groups is None else torch.tensor(groups),
        entropy=None if entropy is None else torch.tensor(entropy, dtype=D),
        truncated=None if truncated is None else torch.tensor(truncated),
        progress=progress,
    )
    metrics = Metrics()
    return build_part("selection", {"type": kind, **options}).select(mask, batch, metrics), metrics.result()


def kept_rows(mask):
    return (mask.sum(-1) > 0).int().tolist()


def test_d3s_sample_across_the_batch_by_hand():
    # 6 candidates, N = round(0.5 * 6) = 3. Sorted A: -1, -0.5, 0, 0.2, 0.8, 1.5; subsets a lowest + 3-a
    # highest have variances 0.2822, 1.1089, 1.1667 (a=2: {-1, -0.5, 1.5}), 0.1667 -> rows 3, 1, 0
    adv = [1.5, -0.5, 0.2, -1.0, 0.0, 0.8, 3.0]
    mask = [[1, 1]] * 6 + [[0, 0]]  # the last row is empty: not a candidate
    out, m = select("d3s_sample", mask, adv, keep_init=0.5, keep_final=1.0)
    assert kept_rows(out) == [1, 1, 0, 1, 0, 0, 0]
    assert m["objective/d3s_sample_frac"] == 0.5
    # kept A: (1.5, -0.5, -1): var 7/6; all 6 candidates: mean 1/6, mean square (2.25+.25+.04+1+.64)/6
    assert m["objective/d3s_adv_var_kept"] == pytest.approx(7 / 6)
    assert m["objective/d3s_adv_var_all"] == pytest.approx(4.18 / 6 - 1 / 36)
    # at the end of training every candidate is kept, except the zero-advantage row
    out, m = select("d3s_sample", mask, adv, keep_init=0.5, keep_final=1.0, progress=1.0)
    assert kept_rows(out) == [1, 1, 1, 1, 0, 1, 0]
    assert m["objective/d3s_kept_seq_frac"] == pytest.approx(5 / 6)


def test_d3s_sample_within_groups_by_hand():
    # N = round(0.5 * 4) = 2 per group: the extremes of each group
    adv = [0.1, -1.0, 0.5, 2.0, 0.3, 0.2, -0.1, -0.4]
    out, _ = select("d3s_sample", [[1]] * 8, adv, groups=[0, 0, 0, 0, 1, 1, 1, 1], keep_init=0.5, cross_group=False)
    assert kept_rows(out) == [0, 1, 0, 1, 1, 0, 0, 1]


def test_d3s_sample_within_groups_keeps_each_groups_largest_abs_advantage_when_keeping_one():
    # N = round(0.25 * 4) = 1 per group, and one row has variance 0 whichever it is: group 0 (one
    # success) keeps its success (A = 1.5), group 1 (one failure) its failure (A = -1.5), not its best row
    adv = [1.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, -1.5]
    out, _ = select("d3s_sample", [[1]] * 8, adv, groups=[0, 0, 0, 0, 1, 1, 1, 1], keep_init=0.25, cross_group=False)
    assert kept_rows(out) == [1, 0, 0, 0, 0, 0, 0, 1]


def test_d3s_token_keeps_top_k_of_abs_advantage_times_entropy():
    # scores |A| * H: row 0 (A = 2): 0.2, 1.0, 0.6; row 1 (A = -1): 0.9, 0.2, 0.05 (masked: 0.3)
    entropy = [[0.1, 0.5, 0.3], [0.9, 0.2, 0.05], [0.3, 0.3, 0.3]]
    mask = [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    out, m = select("d3s_token", mask, [2.0, -1.0, 5.0], entropy=entropy, k_init=0.5, k_final=1.0)
    assert out.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]  # ceil(0.5 * 6) = 3 tokens
    assert m["objective/d3s_token_frac"] == 0.5 and m["objective/d3s_kept_token_frac"] == 0.5
    out, m = select("d3s_token", mask, [2.0, -1.0, 5.0], entropy=entropy, k_init=0.5, k_final=1.0, progress=0.5)
    assert out.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]  # K = 0.75: ceil(4.5) = 5 tokens
    assert m["objective/d3s_token_frac"] == 0.75


def test_top_entropy_keeps_the_highest_entropy_tokens_and_at_least_one():
    entropy = [[0.1, 0.5, 0.3], [0.9, 0.2, 0.05]]
    out, _ = select("top_entropy", [[1, 1, 1], [1, 1, 0]], entropy=entropy, fraction=0.4)
    assert out.tolist() == [[0, 1, 0], [1, 0, 0]]  # ceil(0.4 * 5) = 2
    out, _ = select("top_entropy", [[1, 1, 1], [1, 1, 0]], entropy=entropy, fraction=0.01)
    assert out.tolist() == [[0, 0, 0], [1, 0, 0]]


def test_fraction_counts_are_exact_at_their_boundaries():
    """Counts that are a fraction of n land on whole numbers and halves: computed on the decimals, not in
    floats, where 0.07 * 100 = 7.000000000000001 and (1 - 0.6) * 0.25 + 0.6 * 0.75 = 0.5499999999999999."""
    ranks = [[float(i) for i in range(100)]]  # 100 distinct entropies
    out, _ = select("top_entropy", [[1] * 100], entropy=ranks, fraction=0.07)
    assert out.sum() == 7  # ceil(0.07 * 100) = 7, not 8
    # d3s_token at p = 0.4 of 0.25 -> 0.75: K = 0.45; ceil(0.45 * 20) = 9 (floats: 0.45000000000000007 -> 10)
    out, m = select("d3s_token", [[1] * 20], [1.0], entropy=[ranks[0][:20]], k_init=0.25, k_final=0.75, progress=0.4)
    assert out.sum() == 9 and m["objective/d3s_token_frac"] == 0.45
    # d3s_sample at p = 0.6: 0.55 of 10 candidates is 5.5, rounded half up to 6 (floats: 5.4999... -> 5)
    out, m = select(
        "d3s_sample", [[1]] * 10, [float(i + 1) for i in range(10)], keep_init=0.25, keep_final=0.75, progress=0.6
    )
    assert sum(kept_rows(out)) == 6 and m["objective/d3s_sample_frac"] == 0.55
    assert subset_size(0.29, 50) == 15  # 14.5 up, where floats give 14.499999999999998


def test_dynamic_sampling_masks_groups_without_signal():
    out, m = select("dynamic_sampling", [[1, 1]] * 5, [0.0, 0.0, 1.0, -1.0, 0.0], groups=[3, 3, 1, 1, 2])
    assert kept_rows(out) == [0, 0, 1, 1, 0]
    assert m["objective/dynamic_sampling_kept_group_frac"] == pytest.approx(1 / 3)


def test_mask_truncated_empties_truncated_rows():
    out, m = select("mask_truncated", [[1, 1], [1, 0], [1, 1]], truncated=[True, False, False])
    assert out.tolist() == [[0, 0], [1, 0], [1, 1]]
    assert m["objective/truncation_kept_seq_frac"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="truncated"):
        select("mask_truncated", [[1]])


def test_selection_composes_and_leaves_the_denominators():
    # dynamic sampling then token-mean: the flat group's tokens do not dilute the mean
    from rlkit.objectives import build_objective

    objective = build_objective({"preset": "dapo", "selection": [{"type": "dynamic_sampling"}]})
    mask = torch.ones(4, 3, dtype=D)
    batch = StepBatch(
        mask=mask, advantages=torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=D), group_ids=torch.tensor([0, 0, 1, 1])
    )
    weights = objective.prepare(batch, Metrics())
    torch.testing.assert_close(weights, torch.tensor([[1 / 6] * 3] * 2 + [[0.0] * 3] * 2, dtype=D))
