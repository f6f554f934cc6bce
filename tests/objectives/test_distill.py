"""On-policy distillation parts: divergences, the sampled-token surrogate, TIP selection (hand-worked)."""

import math

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.objectives import StepBatch, SurrogateInputs, build_part
from rlkit.objectives.distill import entropy_and_divergences, jsd, step_quantile, token_divergence

P_S, P_T = (0.5, 0.5), (0.9, 0.1)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def logs(p):
    return torch.tensor(p, dtype=torch.float64).log()[None]


@pytest.mark.parametrize(
    "beta, expected",
    [
        (0.0, kl(P_T, P_S)),  # forward KL(P_T || P_S) = 0.368064
        (1.0, kl(P_S, P_T)),  # reverse KL(P_S || P_T) = 0.510826
        (0.5, 0.5 * kl(P_T, (0.7, 0.3)) + 0.5 * kl(P_S, (0.7, 0.3))),  # M = (0.7, 0.3): 0.101750
        (0.25, 0.25 * kl(P_T, (0.6, 0.4)) + 0.75 * kl(P_S, (0.6, 0.4))),  # M = 0.75 P_S + 0.25 P_T
    ],
)
def test_jsd_values_in_trl_convention(beta, expected):
    assert float(jsd(logs(P_S), logs(P_T), beta)) == pytest.approx(expected, rel=1e-12)


def test_jsd_half_is_symmetric_and_others_are_not():
    gen = torch.Generator().manual_seed(0)
    s, t = (torch.randn(5, 7, generator=gen, dtype=torch.float64).log_softmax(-1) for _ in range(2))
    torch.testing.assert_close(jsd(s, t, 0.5), jsd(t, s, 0.5), rtol=1e-12, atol=0)
    torch.testing.assert_close(jsd(s, t, 0.0), jsd(t, s, 1.0), rtol=1e-12, atol=0)
    assert not torch.allclose(jsd(s, t, 0.3), jsd(t, s, 0.3))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_divergence_matches_unchunked_values_and_gradients(beta):
    gen = torch.Generator().manual_seed(1)
    student = (3 * torch.randn(3, 5, 11, generator=gen)).requires_grad_(True)
    teacher = 3 * torch.randn(3, 5, 11, generator=gen)
    keep = torch.rand(3, 5, generator=gen) > 0.3
    # reference: the whole [b,T,V] at once, in float64, through torch's kl_div for the endpoints
    s64, t64 = (student.double() / 0.7).log_softmax(-1), (teacher.double() / 0.7).log_softmax(-1)
    if beta in (0.0, 1.0):
        target, inp = (t64, s64) if beta == 0 else (s64, t64)
        ref = torch.nn.functional.kl_div(inp, target, log_target=True, reduction="none").sum(-1)
    else:
        ref = jsd(s64, t64, beta)
    ref = torch.where(keep, ref, 0.0)
    (grad_ref,) = torch.autograd.grad(ref.sum(), student)
    whole = token_divergence(student[keep], teacher[keep], keep, beta, temperature=0.7, chunk=10_000)  # one chunk
    (grad_whole,) = torch.autograd.grad(whole.sum(), student)
    # fp32 against float64: an fp32 log-softmax of logits z/T is off by ~eps * max|z/T| in each log-prob
    # (shifting by the max, then the log-sum-exp, both round at that scale), and every value and gradient
    # element is a probability-weighted sum of the two models' log-probs: each a few such errors, the
    # gradient's times 1/T. Measured (max|z/T| = 14.3): values off by 1.9e-6, gradients by 1.5e-6.
    log_prob_error = torch.finfo(torch.float32).eps * max(student.abs().max(), teacher.abs().max()).item() / 0.7
    torch.testing.assert_close(whole.double(), ref, rtol=0, atol=4 * log_prob_error)
    torch.testing.assert_close(grad_whole, grad_ref, rtol=0, atol=4 * log_prob_error / 0.7)  # grad_ref: fp32 leaf
    for chunk in (1, 4):
        out = token_divergence(student[keep], teacher[keep], keep, beta, temperature=0.7, chunk=chunk)
        (grad,) = torch.autograd.grad(out.sum(), student)
        torch.testing.assert_close(out, whole, rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, grad_whole, rtol=0, atol=1e-6)
        assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    none = torch.zeros_like(keep)
    empty = token_divergence(student[none], teacher[none], none, beta)
    assert empty.requires_grad and torch.equal(empty, torch.zeros_like(empty))


def test_scoring_statistics_by_hand():
    student = torch.tensor([[[0.0, 0.0], [math.log(9.0), 0.0]]])  # P_S = (.5,.5), (.9,.1)
    teacher = torch.tensor([[[math.log(9.0), 0.0], [math.log(9.0), 0.0]]])
    stats = entropy_and_divergences(student, teacher, chunk=1)
    h2 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    torch.testing.assert_close(stats["h"], torch.tensor([[1.0, h2]]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats["rkl"], torch.tensor([[kl(P_S, P_T), 0.0]]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats["fkl"], torch.tensor([[kl(P_T, P_S), 0.0]]), rtol=1e-6, atol=1e-7)
    assert stats["agree"][0, 1] == 1.0  # argmax of a uniform row is index 0, the teacher's too


# --------------------------------------------------------------------------- sampled-token surrogate


def test_sampled_reverse_kl_gradient_is_the_full_reverse_kl_gradient_in_expectation():
    """E_{y ~ pi}[grad of the surrogate at y] = grad KL(pi || pi_T), enumerated exactly over V = 5."""
    gen = torch.Generator().manual_seed(2)
    theta = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_(True)
    teacher = torch.randn(5, generator=gen, dtype=torch.float64).log_softmax(-1)
    part = build_part("surrogate", {"type": "opd_sampled", "coef": 1.0})
    expected = torch.zeros(5, dtype=torch.float64)
    probs = theta.detach().softmax(-1)
    for y in range(5):
        logp = theta.log_softmax(-1)[y].view(1, 1)
        batch = StepBatch(
            mask=torch.ones(1, 1, dtype=torch.float64),
            advantages=torch.zeros(1, dtype=torch.float64),
            group_ids=torch.zeros(1, dtype=torch.long),
            logp_teacher=teacher[y].view(1, 1),
        )
        (grad,) = torch.autograd.grad(part.loss(SurrogateInputs(logp), batch, Metrics()).sum(), theta)
        expected += probs[y] * grad
    logp_all = theta.log_softmax(-1)
    (grad_kl,) = torch.autograd.grad((logp_all.exp() * (logp_all - teacher)).sum(), theta)
    torch.testing.assert_close(expected, grad_kl, rtol=1e-10, atol=1e-12)
    # and a plain backprop through log pi - log pi_T would have expectation 0, not grad KL
    assert grad_kl.abs().max() > 1e-2


def test_sampled_surrogate_mixes_task_advantage_and_clips():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    batch = StepBatch(
        mask=torch.ones(1, 2, dtype=torch.float64),
        advantages=torch.tensor([0.5], dtype=torch.float64),
        group_ids=torch.zeros(1, dtype=torch.long),
        logp_old=torch.tensor([[-1.5, -2.0]], dtype=torch.float64),
        logp_teacher=torch.tensor([[-0.5, -3.0]], dtype=torch.float64),
    )
    part = build_part(
        "surrogate", {"type": "opd_sampled", "coef": 2.0, "reward_coef": 0.1, "eps_low": 0.2, "eps_high": 0.2}
    )
    loss = part.loss(SurrogateInputs(logp), batch, Metrics())
    # A = -2 (old - teacher) + 0.1 * 0.5: token 0: -2(-1) + .05 = 2.05, ratio e^0.5 clipped at 1.2;
    # token 1: -2(1) + .05 = -1.95, ratio 1
    torch.testing.assert_close(loss.detach(), torch.tensor([[-2.05 * 1.2, 1.95]], dtype=torch.float64))
    loss.sum().backward()
    assert logp.grad[0, 0] == 0.0 and logp.grad[0, 1] == pytest.approx(1.95, rel=1e-12)


# ------------------------------------------------------------------------------------------- TIP

# two rows, hand-worked; row 1 has two valid tokens
H = [[0.1, 0.4, 0.9, 0.3], [0.7, 0.1, 0.0, 0.0]]
RKL = [[0.2, 0.0, 0.3, 0.8], [0.6, 0.2, 0.0, 0.0]]
FKL = [[1.0, 2.4, 3.0, 0.5], [0.2, 1.0, 0.0, 0.0]]
MASK = [[1.0, 1, 1, 1], [1, 1, 0, 0]]
AGREE = [[1.0, 0, 1, 0], [1, 1, 0, 0]]


def tip_batch(h=H, rkl=RKL, fkl=FKL, mask=MASK, agree=AGREE):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    extras = {"tip_h": t(h), "tip_rkl": t(rkl), "tip_fkl": t(fkl), "tip_agree": t(agree)}
    return StepBatch(
        mask=t(mask), advantages=torch.zeros(2, dtype=torch.float64), group_ids=torch.tensor([0, 1]), extras=extras
    )


def select(rule, rho, clip_quantile=1.0, **kw):
    part = build_part("selection", {"type": "tip", "rule": rule, "rho": rho, "clip_quantile": clip_quantile})
    batch, metrics = tip_batch(**kw), Metrics()
    return part.select(batch.mask, batch, metrics).tolist(), metrics.result()


# Without clipping: h^ = (h - 0.1) / 0.8 = [0, .375, 1, .25], [.75, 0]; d^ = rkl / 0.8 = [.25, 0, .375, 1], [.75, .25]
# soft-OR s = h^ + d^ - h^ d^ = [.25, .375, 1, 1], [.9375, .25]
@pytest.mark.parametrize(
    "rho, expected",
    [
        (0.5, [[0, 0, 1, 1], [1, 0, 0, 0]]),  # k = 2 and 1
        (0.25, [[0, 0, 1, 0], [1, 0, 0, 0]]),  # k = 1 and max(1, floor(0.5)) = 1; tie 1 = 1 -> earlier
        (1.0, MASK),
    ],
)
def test_soft_or_by_hand(rho, expected):
    assert select("soft_or", rho)[0] == expected


# q3: fkl * (1 - h^) = [1, 1.5, 0, .375], [.05, 1]
@pytest.mark.parametrize("rho, expected", [(0.5, [[1, 1, 0, 0], [0, 1, 0, 0]]), (0.25, [[0, 1, 0, 0], [0, 1, 0, 0]])])
def test_q3_by_hand(rho, expected):
    assert select("q3", rho)[0] == expected


def test_entropy_clip_at_the_steps_98th_percentile():
    # valid h sorted: .1 .1 .3 .4 .7 .9; position .98 * 5 = 4.9 -> .7 + .9 * (.9 - .7) = .88
    values = torch.tensor([0.1, 0.4, 0.9, 0.3, 0.7, 0.1], dtype=torch.float64)
    assert float(step_quantile(values, 0.98)) == pytest.approx(0.88, rel=1e-12)
    assert float(step_quantile(values, 0.98)) == pytest.approx(float(torch.quantile(values, 0.98)), rel=1e-12)
    # a case the clip changes: h = .9 at row 0 position 2 is capped at .88, so h^ = 1 there and at no
    # other token; with rkl zero everywhere the soft-OR ranks by h^ alone: row 0 keeps position 2 then 1
    assert select("soft_or", 0.5, clip_quantile=0.98, rkl=[[0.0] * 4] * 2)[0] == [[0, 1, 1, 0], [1, 0, 0, 0]]


def test_kept_counts_and_quantile_positions_are_exact():
    """floor(rho m) and the quantile's position q (n - 1) on the decimals: in float32 0.13 * 900 is
    116.99999 (floor 116), in doubles 0.29 * 100 is 28.999999999999996."""
    gen = torch.Generator().manual_seed(0)
    h, rkl, fkl = (torch.rand(2, 900, generator=gen, dtype=torch.float64).tolist() for _ in range(3))
    mask = [[1.0] * 900, [1.0] * 100 + [0.0] * 800]
    kept, _ = select("soft_or", 0.13, h=h, rkl=rkl, fkl=fkl, mask=mask, agree=mask)
    assert [sum(row) for row in kept] == [117, 13]  # floor(0.13 * 900), floor(0.13 * 100)
    ranks = torch.arange(101, dtype=torch.float64)
    assert float(step_quantile(ranks, 0.29)) == 29.0 and float(step_quantile(ranks, 0.07)) == 7.0


def test_degenerate_step_and_empty_rows():
    # every h and rkl equal: min-max spans are 0, all scores 0, each row keeps its first k tokens
    same = [[0.3] * 4, [0.3] * 4]
    assert select("soft_or", 0.5, h=same, rkl=same)[0] == [[1, 1, 0, 0], [1, 0, 0, 0]]
    kept, _ = select("soft_or", 0.5, mask=[[1.0, 1, 1, 1], [0, 0, 0, 0]])
    assert kept[1] == [0, 0, 0, 0]
    assert select("q3", 0.5, mask=[[0.0] * 4] * 2)[0] == [[0.0] * 4] * 2


def test_tip_metrics_by_hand():
    _, m = select("soft_or", 0.5)
    # h^ > .5: row0 pos 2, row1 pos 0; d^ > .5: row0 pos 3, row1 pos 0
    assert m["objective/tip_q1_frac"] == pytest.approx(1 / 6)  # high h, high d: row1 pos 0
    assert m["objective/tip_q2_frac"] == pytest.approx(1 / 6)  # high h, low d: row0 pos 2
    assert m["objective/tip_q3_frac"] == pytest.approx(1 / 6)  # low h, high d: row0 pos 3
    assert m["objective/tip_q4_frac"] == pytest.approx(3 / 6)
    assert m["objective/tip_kept_token_frac"] == pytest.approx(3 / 6)
    assert m["objective/tip_rkl_all"] == pytest.approx(2.1 / 6)
    assert m["objective/tip_rkl_kept"] == pytest.approx((0.3 + 0.8 + 0.6) / 3)
    assert m["objective/teacher_agree_all"] == pytest.approx(4 / 6)


def test_entropy_sampling_draws_in_proportion_to_entropy():
    part = build_part("selection", {"type": "tip", "rule": "entropy", "rho": 0.25})
    h = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64).repeat(20_000, 1)
    first = part.gumbel_keys(h, 0, progress=0.0).argmax(-1)
    freq = torch.bincount(first, minlength=5).double() / first.numel()
    # binomial std at n = 20000 is at most 0.0036
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64), rtol=0, atol=0.015)
    kept, m = select("entropy", 0.5)
    assert [sum(r) for r in kept] == [2, 1] and m["objective/tip_kept_token_frac"] == pytest.approx(0.5)
    # a row's draw depends on its index in the step and its values only, not on padding or other rows
    keys = part.gumbel_keys(h[:4], 0, 0.5)
    torch.testing.assert_close(part.gumbel_keys(h[2:4, :3], 2, 0.5), keys[2:4, :3], rtol=0, atol=0)
    assert not torch.equal(part.gumbel_keys(h[:4], 0, 0.6), keys)
