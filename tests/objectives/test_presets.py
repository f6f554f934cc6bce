"""Every preset: micro-batch invariance, the all-masked batch, overrides, user parts, the listing."""

import math

import pytest
import torch
from objectives_toy import TOOL, G, prepared, step_gradient

from rlkit.objectives import KINDS, PARTS, PRESETS, build_objective, describe, resolve_spec

ALL = sorted(PRESETS)


def objective_for(name, **overrides):
    return build_objective({"preset": name, **overrides})


@pytest.mark.parametrize("on_policy", [False, True], ids=["off_policy", "on_policy"])
@pytest.mark.parametrize("name", ALL)
def test_gradient_same_with_one_or_four_micro_batches(name, on_policy):
    objective = objective_for(name)
    loss1, grad1, _ = step_gradient(objective, 1, on_policy=on_policy)
    loss4, grad4, _ = step_gradient(objective, 4, split_seed=1, on_policy=on_policy)
    assert grad1.abs().sum() > 0
    assert loss4 == pytest.approx(loss1, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad4, grad1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "extra",
    [{"kl": {"beta": 0.0}}, {"kl": {"beta": 0.1}}, {"entropy_bonus": 0.01}],
    ids=["no_kl", "kl", "entropy_bonus"],
)
@pytest.mark.parametrize("name", ALL)
def test_running_only_the_active_rows_gives_the_same_gradient(name, extra):
    """The trainer runs only ``active_rows`` (zero-advantage rows are skipped where their loss is exactly 0)."""
    objective = objective_for(name, **extra)
    loss_all, grad_all, _ = step_gradient(objective, 2)
    loss_active, grad_active, _ = step_gradient(objective, 2, active_only=True)
    assert grad_all.abs().sum() > 0
    assert loss_active == pytest.approx(loss_all, rel=1e-12, abs=1e-15)
    torch.testing.assert_close(grad_active, grad_all, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("name", "extra", "skipped"),
    [
        ("grpo", {"kl": {"beta": 0.0}}, True),  # the clipped surrogate alone
        ("gspo", {}, True),
        ("ctpo", {}, True),
        ("grpo", {}, False),  # k3 KL weighted with W: not zero
        ("grpo", {"kl": {"beta": 0.0}, "entropy_bonus": 0.01}, False),  # the entropy bonus: not zero
        ("opd", {}, False),  # distillation ignores advantages
    ],
)
def test_zero_advantage_rows_are_skipped_only_where_their_loss_is_zero(name, extra, skipped):
    objective = objective_for(name, **extra)
    _, batch, weights, _, _ = prepared(objective)
    no_signal = torch.zeros(batch.n_rows, dtype=torch.bool)
    no_signal[G : 2 * G] = True  # the toy step's group whose rewards are all equal: advantages exactly 0
    assert torch.all(batch.advantages[no_signal] == 0) and torch.all(weights[no_signal].abs().sum(-1) > 0)
    active = objective.active_rows(batch, weights)
    assert torch.all(active[no_signal] != skipped)
    assert torch.all(active[~no_signal] == (weights[~no_signal] != 0).any(-1))


@pytest.mark.parametrize("name", ALL)
def test_all_masked_batch_gives_finite_loss_and_zero_gradient(name):
    objective = objective_for(name)
    loss, grad, _ = step_gradient(objective, 2, empty_mask=True)
    assert math.isfinite(loss) and loss == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", ALL)
def test_tool_tokens_get_no_gradient_and_change_nothing(name):
    """Multi-turn rows hold tool output with loss mask 0 (rlkit/rollout/episodes.py): under every preset its
    positions (and the padding) get exactly zero gradient, and changing everything there (tokens, policy,
    old, reference and teacher values) leaves the loss and every other gradient exactly as they were."""
    objective = objective_for(name)
    mask = prepared(objective, tool_span="masked")[1].mask
    assert mask[:, TOOL].sum() < mask[:, TOOL].numel() and (mask[:, 4:].sum(-1) > 0).any()  # holes in rows
    loss, grad, _ = step_gradient(objective, 2, tool_span="masked")
    loss_changed, grad_changed, _ = step_gradient(objective, 2, tool_span="perturbed")
    masked = (mask == 0)[..., None].expand_as(grad)
    assert grad[masked].abs().sum() == 0 and grad_changed[masked].abs().sum() == 0
    assert grad.abs().sum() > 0
    assert loss_changed == pytest.approx(loss, rel=1e-12, abs=1e-15)
    torch.testing.assert_close(grad_changed, grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ALL)
def test_presets_declare_what_they_read(name):
    objective = objective_for(name)
    assert objective.needs <= {
        "logp_old",
        "logp_ref",
        "entropy",
        "logits",
        "logp_teacher",
        "teacher_logits",
        "student_logits",
    }
    assert PRESETS[name]["description"]
    assert objective.name == name


def test_override_merges_same_type_and_replaces_other_type():
    spec = resolve_spec({"preset": "grpo", "surrogate": {"eps_high": 0.28}, "aggregation": {"type": "token_mean"}})
    assert spec["surrogate"] == {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28}
    assert spec["aggregation"] == {"type": "token_mean"}
    objective = build_objective({"preset": "dapo", "selection": [], "kl": {"type": "kl_in_reward", "beta": 0.1}})
    assert objective.selection == () and objective.kl.estimator == "k1"
    with pytest.raises(KeyError, match="unknown objective keys"):
        build_objective({"preset": "grpo", "surogate": {}})
    with pytest.raises(KeyError, match="unknown objective preset"):
        build_objective({"preset": "nope"})


def test_user_part_by_import_path_is_used():
    custom = objective_for("dr_grpo", aggregation={"type": "objectives_toy:HalfTokenMean"})
    plain = objective_for("dr_grpo", aggregation={"type": "token_mean"})
    _, grad_custom, _ = step_gradient(custom, 1)
    _, grad_plain, _ = step_gradient(plain, 1)
    torch.testing.assert_close(grad_custom, 0.5 * grad_plain, rtol=1e-12, atol=0)


def test_entropy_bonus_subtracts_weighted_entropy():
    base = objective_for("dapo")
    bonus = objective_for("dapo", entropy_bonus=0.01)
    loss_base, _, _ = step_gradient(base, 1)
    loss_bonus, _, _ = step_gradient(bonus, 1)
    theta, batch, weights, _, _ = prepared(base)
    logits = theta.log_softmax(-1)
    entropy = -(logits.exp() * logits).sum(-1)
    assert loss_bonus == pytest.approx(loss_base - 0.01 * float((weights * entropy).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="entropy"):
        bonus.loss(theta[:, :, 0], batch, weights, __import__("rlkit.metrics").metrics.Metrics())


def test_describe_lists_every_part_and_preset_with_a_description():
    text = describe()
    for kind in KINDS:
        for name, cls in PARTS[kind].items():
            assert name in text and cls.description() and cls.description() in text
    for name in PRESETS:
        assert f"  {name} " in text


def test_plain_tensor_usage_as_documented():
    from rlkit.metrics import Metrics
    from rlkit.objectives import StepBatch

    torch.manual_seed(0)
    B, T, V = 8, 5, 11
    logits = torch.randn(B, T, V, requires_grad=True)
    tokens = torch.randint(V, (B, T))
    logp_of = lambda rows: logits[rows].log_softmax(-1).gather(-1, tokens[rows, :, None]).squeeze(-1)  # noqa: E731
    mask, group_ids = torch.ones(B, T), torch.arange(2).repeat_interleave(4)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1])

    objective = build_objective({"preset": "dapo", "surrogate": {"eps_high": 0.3}})
    batch = StepBatch(mask=mask, advantages=torch.zeros(B), group_ids=group_ids, logp_old=logp_of(slice(None)).detach())
    batch.advantages = objective.advantages(rewards, batch)
    metrics = Metrics()
    weights = objective.prepare(batch, metrics)
    for rows in torch.arange(B).split(3):
        loss = objective.loss(logp_of(rows), batch.rows(rows), weights[rows], metrics)
        loss.backward()
    # on-policy: d loss / d logp = -A / (number of tokens); A = +-sqrt(3)/2 / (... ) from z-scores of (1,0,0,1)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert batch.advantages[:4].tolist() == pytest.approx([a, -a, -a, a], rel=1e-6)
    assert metrics.result()["objective/clip_frac_high"] == 0.0 and logits.grad.abs().sum() > 0
