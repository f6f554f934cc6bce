"""Advantage estimators and DAPO's group filter, against values worked out by hand."""

import math

import torch

from rlkit.advantages import BatchStd, GroupMean, GroupZScore, RLOO
from rlkit.objectives import keep_groups

nan = math.nan


def close(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.double), rtol=1e-6, atol=1e-9)


def test_group_zscore_uses_unbiased_std_and_zeroes_flat_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)          # mean 0.5, unbiased std sqrt(4 * 0.25 / 3)
    close(GroupZScore()(rewards, groups), [a, -a, -a, a, 0, 0, 0, 0])


def test_group_zscore_skips_nan_rewards_and_singletons_get_zero():
    rewards = torch.tensor([1.0, nan, 0.0, 5.0])
    groups = torch.tensor([7, 7, 7, 3])            # any labels
    a = 0.5 / (math.sqrt(0.5) + 1e-6)             # valid rewards {1, 0}: mean 0.5, std sqrt(0.5)
    close(GroupZScore()(rewards, groups), [a, 0, -a, 0])


def test_group_mean_and_rloo():
    rewards = torch.tensor([3.0, 1.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 0, 1])
    close(GroupMean()(rewards, groups), [1, -1, 0, 0])
    # RLOO: 3 - (1+2)/2, 1 - (3+2)/2, 2 - (3+1)/2; the singleton gets 0
    close(RLOO()(rewards, groups), [1.5, -1.5, 0, 0])


def test_batch_std_scales_by_the_std_of_the_whole_step():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1])
    # batch mean 1.75, squared deviations 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, / 3 -> std 1.5
    close(BatchStd()(rewards, groups), [0.5 / 1.5001, -0.5 / 1.5001, 0, 0])


def test_keep_groups_population_std_or_singleton():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.7, nan, 1.0])
    groups = torch.tensor([4, 4, 1, 1, 9, 2, 2])  # result in sorted label order: 1, 2, 4, 9
    assert keep_groups(rewards, groups).tolist() == [True, False, False, True]
