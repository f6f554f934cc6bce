"""Surrogates: PPO-clip and GSPO by hand, CTPO against a slow loop reference, and the identities
GSPO-token grad == GSPO grad, CTPO == GRPO on-policy, one-token CTPO == PPO."""

import math

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import StepBatch, SurrogateInputs, build_part
from rlkit.objectives.aggregation import SeqMeanTokenMean

D = torch.double


def batch_of(adv, mask, logp_old=None):
    adv = torch.tensor(adv, dtype=D)
    return StepBatch(
        mask=torch.tensor(mask, dtype=D),
        advantages=adv,
        group_ids=torch.zeros(len(adv), dtype=torch.long),
        logp_old=None if logp_old is None else torch.as_tensor(logp_old, dtype=D),
    )


def loss_and_grad(surrogate, logp, batch, weights=None):
    logp = logp.clone().requires_grad_(True)
    metrics = Metrics()
    loss = surrogate.loss(SurrogateInputs(logp), batch, metrics)
    weights = batch.mask if weights is None else weights
    (weights * loss).sum().backward()
    return loss.detach(), logp.grad, metrics.result()


def test_ppo_clip_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.5, 4.0]], dtype=D)
    batch = batch_of([1.0, -1.0], [[1, 1, 1], [1, 1, 1]], logp_old=torch.zeros(2, 3))
    ppo = build_part("surrogate", {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2, "dual_clip": 3.0})
    loss, grad, m = loss_and_grad(ppo, ratios.log(), batch)
    # A=+1: -min(r, clip r): r=1.5 -> -1.2 (clipped, no grad); 0.5 -> -0.5 (grad -r); 1 -> -1
    # A=-1: max(r, clip r): 0.5 -> 0.8 (clipped); 1.5 -> 1.5 (grad r); 4 -> 4 capped by dual clip at 3
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, -1.0], [0.8, 1.5, 3.0]], dtype=D))
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.5, -1.0], [0.0, 1.5, 0.0]], dtype=D))
    assert (
        m["objective/clip_frac_low"],
        m["objective/clip_frac_high"],
        m["objective/clip_frac_dual"],
    ) == pytest.approx((1 / 6, 1 / 6, 1 / 6), rel=1e-12)
    assert m["objective/ratio_max"] == pytest.approx(4.0) and m["objective/ratio_min"] == pytest.approx(0.5)


def test_on_policy_ratio_is_one_and_gradient_is_minus_advantage():
    batch = batch_of([2.0, -0.5], [[1, 1], [1, 0]])
    loss, grad, _ = loss_and_grad(build_part("surrogate", {"type": "ppo_clip"}), torch.randn(2, 2, dtype=D), batch)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -2.0], [0.5, 0.5]], dtype=D))
    torch.testing.assert_close(grad, torch.tensor([[-2.0, -2.0], [0.5, 0.0]], dtype=D))


def test_gspo_sequence_ratio_by_hand():
    # row 0: log-ratios (0.1, 0.3) on its 2 valid tokens -> s = e^0.2 = 1.2214 > 1.2 -> clipped, -1.2
    # row 1: log-ratios (-0.1, 0, 0.1) -> s = 1 -> loss -A = -2, d loss / d logp_t = -A s / 3
    logp = torch.tensor([[0.1, 0.3, 9.0], [-0.1, 0.0, 0.1]], dtype=D)
    batch = batch_of([1.0, 2.0], [[1, 1, 0], [1, 1, 1]], logp_old=torch.zeros(2, 3))
    gspo = build_part("surrogate", {"type": "gspo", "eps_low": 0.2, "eps_high": 0.2})
    weights = SeqMeanTokenMean().weights(batch.mask, batch, Metrics())
    loss, grad, m = loss_and_grad(gspo, logp, batch, weights)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -1.2, -1.2], [-2.0, -2.0, -2.0]], dtype=D))
    torch.testing.assert_close(grad, torch.tensor([[0, 0, 0], [-2 / 3, -2 / 3, -2 / 3]], dtype=D) / 2)  # W = 1/2/L
    assert m["objective/clip_frac_high"] == pytest.approx(0.5)  # per sequence


def test_gspo_token_gradient_equals_gspo_gradient():
    gen = torch.Generator().manual_seed(0)
    logp_old = -torch.rand(6, 5, generator=gen, dtype=D)
    logp = logp_old + 0.02 * torch.randn(6, 5, generator=gen, dtype=D)
    mask = (torch.arange(5)[None] < torch.tensor([5, 3, 1, 4, 0, 2])[:, None]).double()
    batch = StepBatch(
        mask=mask,
        advantages=torch.tensor([1.0, -1, 0.5, -2, 1, 3], dtype=D),
        group_ids=torch.zeros(6, dtype=torch.long),
        logp_old=logp_old,
    )
    weights = SeqMeanTokenMean().weights(mask, batch, Metrics())
    options = {"eps_low": 0.003, "eps_high": 0.004}
    seq_loss, seq_grad, seq_m = loss_and_grad(
        build_part("surrogate", {"type": "gspo", **options}), logp, batch, weights
    )
    tok_loss, tok_grad, tok_m = loss_and_grad(
        build_part("surrogate", {"type": "gspo_token", **options}), logp, batch, weights
    )
    assert 0 < seq_m["objective/clip_frac_high"] + seq_m["objective/clip_frac_low"] < 1  # both branches used
    torch.testing.assert_close(tok_loss * mask, seq_loss * mask, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(tok_grad, seq_grad, rtol=1e-12, atol=1e-15)
    assert seq_grad.abs().sum() > 0


def ctpo_reference(logp, logp_old, adv, mask, mode, eps_low, eps_high, eps_c, power):
    """Slow loop: loss [B,T] and d loss_t / d logp_t on valid tokens (zero elsewhere)."""
    loss = torch.zeros_like(logp)
    grad = torch.zeros_like(logp)
    for i in range(logp.shape[0]):
        a, cum, t = float(adv[i]), 0.0, 0
        for j in range(logp.shape[1]):
            if not mask[i, j]:
                continue
            t += 1
            cum += min(max(float(logp[i, j] - logp_old[i, j]), -20.0), 20.0)
            log_rho = cum if mode == "cumprod" else cum / t
            capped = log_rho > 10
            log_rho = min(log_rho, 10.0)
            lo, hi = -eps_low * t**power, eps_high * t**power
            rho = math.exp(log_rho)
            unclipped, clipped = -a * rho, -a * math.exp(min(max(log_rho, lo), hi))
            value = max(unclipped, clipped)
            slope = -a * rho if unclipped >= clipped and not capped else 0.0  # the clipped branch is flat
            if eps_c is not None and a < 0 and value > -a * math.exp(eps_c * t**power):
                value, slope = -a * math.exp(eps_c * t**power), 0.0
            loss[i, j], grad[i, j] = value, slope
    return loss, grad


@pytest.mark.parametrize("mode,power", [("cumprod", 0.5), ("geomean", -0.5), ("cumprod", 0.0)])
def test_ctpo_matches_slow_loop_reference(mode, power):
    gen = torch.Generator().manual_seed(1)
    b, t = 8, 12
    logp_old = -2 * torch.rand(b, t, generator=gen, dtype=D)
    logp = logp_old + 0.15 * torch.randn(b, t, generator=gen, dtype=D)
    logp[0] += 4.0  # cumulative log-ratio passes the cap of 10
    mask = (torch.arange(t)[None] < torch.randint(1, t + 1, (b,), generator=gen)[:, None]).double()
    mask[1, 2:4] = 0  # a tool-output gap: positions do not advance
    mask[2] = 0  # an empty row
    adv = torch.tensor([1.0, -1.0, 1.0, -0.7, 0.4, -1.5, 2.0, -0.2], dtype=D)
    batch = StepBatch(mask=mask, advantages=adv, group_ids=torch.zeros(b, dtype=torch.long), logp_old=logp_old)
    options = dict(mode=mode, eps_low=0.025, eps_high=0.05, eps_c=0.05, power=power)
    loss, grad, m = loss_and_grad(build_part("surrogate", {"type": "ctpo", **options}), logp, batch)
    ref_loss, ref_grad = ctpo_reference(logp, logp_old, adv, mask, **options)
    torch.testing.assert_close(loss * mask, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert m["objective/clip_frac_low"] > 0 and m["objective/clip_frac_high"] > 0
    if mode == "cumprod":
        assert m["objective/ratio_at_cap_frac"] > 0 and m["objective/clip_frac_dual"] > 0
    assert any(k.startswith("objective/clip_frac_pos/8-15") for k in m)


def test_ctpo_equals_grpo_on_policy():
    gen = torch.Generator().manual_seed(2)
    logp = -torch.rand(4, 6, generator=gen, dtype=D)
    mask = (torch.arange(6)[None] < torch.tensor([6, 2, 0, 4])[:, None]).double()
    for logp_old in (None, logp.clone()):
        batch = StepBatch(
            mask=mask,
            advantages=torch.tensor([1.0, -2, 0.5, -1], dtype=D),
            group_ids=torch.zeros(4, dtype=torch.long),
            logp_old=logp_old,
        )
        ctpo = loss_and_grad(build_part("surrogate", {"type": "ctpo"}), logp, batch)
        ppo = loss_and_grad(build_part("surrogate", {"type": "ppo_clip"}), logp, batch)
        torch.testing.assert_close(ctpo[0] * mask, ppo[0] * mask, rtol=1e-12, atol=0)
        torch.testing.assert_close(ctpo[1], ppo[1], rtol=1e-12, atol=0)


def test_one_token_ctpo_with_matching_window_is_ppo():
    # p = 0 and log-space bounds log(1-0.2), log(1+0.28): rho^cum = r on a one-token response
    gen = torch.Generator().manual_seed(3)
    logp_old = -torch.rand(16, 1, generator=gen, dtype=D)
    logp = logp_old + 0.4 * torch.randn(16, 1, generator=gen, dtype=D)
    batch = StepBatch(
        mask=torch.ones(16, 1, dtype=D),
        advantages=torch.randn(16, generator=gen, dtype=D),
        group_ids=torch.zeros(16, dtype=torch.long),
        logp_old=logp_old,
    )
    ctpo = build_part(
        "surrogate",
        {"type": "ctpo", "eps_low": -math.log(0.8), "eps_high": math.log(1.28), "eps_c": None, "power": 0.0},
    )
    ppo = build_part("surrogate", {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28})
    c, p = loss_and_grad(ctpo, logp, batch), loss_and_grad(ppo, logp, batch)
    assert 0 < p[2]["objective/clip_frac_high"] + p[2]["objective/clip_frac_low"] < 1
    torch.testing.assert_close(c[0], p[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(c[1], p[1], rtol=1e-12, atol=1e-15)


def test_ctpo_overflow_guards_keep_a_long_runaway_sequence_finite():
    logp_old = torch.full((2, 2000), -30.0)
    logp = torch.full((2, 2000), -0.01)  # per-token log-ratio ~30, clamped to 20
    batch = StepBatch(
        mask=torch.ones(2, 2000),
        advantages=torch.tensor([1.0, -1.0]),
        group_ids=torch.zeros(2, dtype=torch.long),
        logp_old=logp_old,
    )
    loss, grad, m = loss_and_grad(build_part("surrogate", {"type": "ctpo"}), logp, batch)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert m["objective/ratio_at_cap_frac"] == 1.0 and m["objective/ratio_max"] == pytest.approx(math.exp(10))


def test_surrogates_reject_invalid_windows():
    with pytest.raises(ValueError):
        build_part("surrogate", {"type": "ppo_clip", "eps_low": 1.0})
    with pytest.raises(ValueError):
        build_part("surrogate", {"type": "gspo", "dual_clip": 0.5})
