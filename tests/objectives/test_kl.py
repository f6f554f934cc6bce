"""KL estimators (values and gradients by hand) and the KL-in-reward placement."""

import math

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import Need, StepBatch, build_objective
from rlkit.objectives.kl import kl_estimate

# logp = -1, logp_ref = -1.5, d = ref - logp = -0.5
CASES = {  # estimator: (value, d value / d logp)
    "k1": (0.5, 1.0),
    "k2": (0.125, 0.5),
    "k3": (math.exp(-0.5) - 0.5, 1 - math.exp(-0.5)),  # exp(d) - d - 1; derivative 1 - exp(d)
    "k1+": (0.5, 0.5),  # straight-through: value of k1, gradient of k2
    "k3+": (math.exp(-0.5) - 0.5, 0.5),
}


@pytest.mark.parametrize("estimator", sorted(CASES))
def test_estimator_value_and_gradient(estimator):
    logp = torch.tensor([-1.0], dtype=torch.double, requires_grad=True)
    value = kl_estimate(logp, torch.tensor([-1.5], dtype=torch.double), estimator)
    value.sum().backward()
    expected_value, expected_grad = CASES[estimator]
    assert float(value.detach()) == pytest.approx(expected_value, rel=1e-12)
    assert float(logp.grad) == pytest.approx(expected_grad, rel=1e-12)


def test_k3_guards_clamp_the_log_ratio_and_the_value():
    value = kl_estimate(torch.tensor([0.0, 0.0]), torch.tensor([-30.0, -5.0]), "k3")
    # d = -30 -> -20: e^-20 + 19 = 19.000000002 -> 10;  d = -5: e^-5 + 4
    torch.testing.assert_close(value, torch.tensor([10.0, math.exp(-5) + 4]), rtol=1e-6, atol=0)


def test_kl_in_loss_adds_beta_times_k3_per_token():
    objective = build_objective({"preset": "grpo"})
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.double)
    batch = StepBatch(
        mask=torch.ones(1, 2, dtype=torch.double),
        advantages=torch.zeros(1, dtype=torch.double),
        group_ids=torch.zeros(1, dtype=torch.long),
        logp_ref=torch.tensor([[-1.5, -2.0]]),
    )
    added = objective.kl.loss(logp, batch, Metrics())
    torch.testing.assert_close(added, torch.tensor([[0.04 * (math.exp(-0.5) - 0.5), 0.0]], dtype=torch.double))


def test_kl_in_reward_subtracts_summed_k1_before_the_advantage():
    objective = build_objective({"preset": "dr_grpo", "kl": {"type": "kl_in_reward", "beta": 0.5}})
    assert objective.needs >= {Need.LOGP_TRAINER, Need.LOGP_REF} and Need.LOGITS not in objective.needs
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = StepBatch(
        mask=mask,
        advantages=torch.zeros(2),
        group_ids=torch.zeros(2, dtype=torch.long),
        logp_ref=torch.full((2, 2), -1.0),
        logp_trainer=torch.full((2, 2), -math.log(4)),  # a uniform policy over 4 tokens at rollout time
    )
    k1 = 1 - math.log(4)  # logp - ref per token
    penalised = [1.0 - 0.5 * 2 * k1, 0.0 - 0.5 * k1]
    half_gap = (penalised[0] - penalised[1]) / 2  # group_mean advantage
    metrics = Metrics()
    adv = objective.advantages(torch.tensor([1.0, 0.0]), batch, metrics)
    torch.testing.assert_close(adv, torch.tensor([half_gap, -half_gap]), rtol=1e-6, atol=0)
    assert metrics.result()["objective/kl"] == pytest.approx(k1, rel=1e-6)
    # nothing is added to the loss
    assert objective.kl.loss(torch.zeros(2, 2), batch, metrics) == 0.0


def test_kl_token_mean_under_balanced_aggregation_reaches_zero_advantage_rows():
    """BA leaves zero-advantage rows at W = 0; kl aggregation token_mean adds beta * mean_t k3 over every
    kept token of the step, those rows included, whatever the micro-batching."""
    from objectives_toy import G, prepared, step_gradient, token_logp

    from rlkit.objectives.kl import kl_estimate

    kl = {"type": "kl", "beta": 0.1, "aggregation": "token_mean"}
    objective = build_objective({"preset": "ba", "kl": kl})
    plain = build_objective({"preset": "ba"})
    loss1, grad1, _ = step_gradient(objective, 1)
    loss3, grad3, _ = step_gradient(objective, 3, split_seed=2)
    torch.testing.assert_close(grad3, grad1, rtol=1e-9, atol=1e-12)
    theta, batch, _, tokens, _ = prepared(objective)
    k3 = kl_estimate(token_logp(theta, tokens), batch.logp_ref, "k3")
    expected_kl = 0.1 * float((k3 * batch.mask).sum() / batch.mask.sum())
    assert loss1 == pytest.approx(step_gradient(plain, 1)[0] + expected_kl, rel=1e-10)
    zero_rows = slice(G, 2 * G)  # the toy's group with all-equal rewards
    assert torch.all(batch.advantages[zero_rows] == 0)
    assert grad1[zero_rows].abs().sum() > 0
    shared = build_objective({"preset": "ba", "kl": {**kl, "aggregation": "objective"}})
    assert step_gradient(shared, 1)[1][zero_rows].abs().sum() == 0
