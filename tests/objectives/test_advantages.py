"""Advantage estimators and the group-signal test, against values worked out by hand."""

import math
from dataclasses import replace

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import PARTS, StepBatch, build_objective
from rlkit.objectives.advantages import RLOO, BatchStd, GroupMean, GroupZScore
from rlkit.objectives.batch import group_has_signal

nan = math.nan


def close(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.double), rtol=1e-6, atol=1e-9)


def test_group_zscore_uses_unbiased_std_and_zeroes_flat_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # mean 0.5, unbiased std sqrt(4 * 0.25 / 3)
    close(GroupZScore()(rewards, groups), [a, -a, -a, a, 0, 0, 0, 0])


def test_group_zscore_skips_nan_rewards_and_singletons_get_zero():
    rewards = torch.tensor([1.0, nan, 0.0, 5.0])
    groups = torch.tensor([7, 7, 7, 3])  # any labels
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # valid rewards {1, 0}: mean 0.5, std sqrt(0.5)
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


def test_group_has_signal_compares_rewards_exactly():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.7, nan, 1.0, 0.1, 0.1, 0.1])
    groups = torch.tensor([4, 4, 1, 1, 9, 2, 2, 5, 5, 5])  # result in sorted label order: 1, 2, 4, 5, 9
    # 1: 0 vs 1; 2: a single valid reward; 4: equal; 5: equal; 9: a singleton
    assert group_has_signal(rewards, groups).tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("estimator", sorted(PARTS["advantage"]))
def test_equal_rewards_give_exactly_zero_advantages(estimator):
    # float64 0.1 three times: the group mean is 0.10000000000000002, so a bare estimator leaves a
    # ~1e-11 (z-score) or ~1e-17 residue, which selection would count as signal
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    bare = PARTS["advantage"][estimator]()(rewards, groups)
    assert (bare[:3] != 0).all()  # the residue the objective must remove
    objective = build_objective({"preset": "dapo", "advantage": {"type": estimator}})
    batch = StepBatch(mask=torch.ones(6, 2), advantages=torch.zeros(6), group_ids=groups)
    advantages = objective.advantages(rewards, batch)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(advantages[3:], bare[3:])
    kept = objective.prepare(replace(batch, advantages=advantages), Metrics())
    assert kept[:3].sum() == 0 and torch.allclose(kept[3:].sum(), torch.tensor(1.0))  # token-mean over group 1
