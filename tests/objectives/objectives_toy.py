"""A toy differentiable policy and step batches for objective tests (plain tensors, no model).

The policy is a table of logits theta [B,T,V]; logp = log_softmax(theta)[tokens] has a gradient, and
the rollout-time / reference policies are perturbed copies, so ratios and KL terms are not trivial.
"""

from __future__ import annotations

import torch

from rlkit.metrics import Metrics
from rlkit.objectives import Objective, StepBatch
from rlkit.objectives.aggregation import Aggregation

N_GROUPS, G, T, V = 4, 4, 7, 6
TOOL = slice(2, 4)  # with ``tool_span``: the positions of a tool's reply inside rows longer than 4 tokens


class HalfTokenMean(Aggregation):
    """A user's own part, plugged in by import path in test_presets."""

    def weights(self, mask, batch, metrics):
        return 0.5 * mask / mask.sum().clamp(min=1)


def token_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


def toy_step(seed: int = 0, empty_mask: bool = False, progress: float = 0.3, tool_span: str | None = None):
    """(theta, batch fields, rewards, rollout logits, tokens) for N_GROUPS groups of G rollouts.

    Lengths vary (one row is empty), one group has all-equal rewards, one row is truncated. The
    teacher's logits [B,T,V] travel in ``batch.extras["teacher_logits"]`` (what the trainer would compute
    per micro-batch), its log-probs of the tokens in ``logp_teacher``. ``tool_span``: "masked" puts a
    tool reply at ``TOOL`` in every row longer than 4 tokens (loss mask 0 there, as multi-turn episodes
    have it); "perturbed" does too, and changes every value there (tokens, policy, old, reference and
    teacher logits) while the other positions keep theirs.
    """
    gen = torch.Generator().manual_seed(seed)
    b = N_GROUPS * G
    theta = torch.randn(b, T, V, generator=gen, dtype=torch.float64)
    old_logits = theta + 0.3 * torch.randn(b, T, V, generator=gen, dtype=torch.float64)
    ref_logits = theta + 0.3 * torch.randn(b, T, V, generator=gen, dtype=torch.float64)
    teacher_logits = theta + torch.randn(b, T, V, generator=gen, dtype=torch.float64)
    tokens = torch.randint(V, (b, T), generator=gen)
    lengths = torch.randint(1, T + 1, (b,), generator=gen)
    lengths[3] = 0
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    if tool_span is not None:
        mask[lengths > 4, TOOL] = 0.0
    if tool_span == "perturbed":
        noise, rows = torch.Generator().manual_seed(seed + 1000), lengths > 4
        for logits in (theta, old_logits, ref_logits, teacher_logits):
            logits[rows, TOOL] += 3 * torch.randn(int(rows.sum()), 2, V, generator=noise, dtype=torch.float64)
        tokens[rows, TOOL] = torch.randint(V, (int(rows.sum()), 2), generator=noise)
    if empty_mask:
        mask.zero_()
    rewards = torch.randint(0, 2, (b,), generator=gen).double()
    rewards[G : 2 * G] = 1.0  # a group without learning signal
    rewards[2 * G : 3 * G] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a group with signal for sure
    group_ids = torch.arange(N_GROUPS).repeat_interleave(G)
    old = old_logits.log_softmax(-1)
    batch = StepBatch(
        mask=mask,
        advantages=torch.zeros(b, dtype=torch.float64),
        group_ids=group_ids,
        logp_old=token_logp(old_logits, tokens),
        logp_ref=token_logp(ref_logits, tokens),
        logp_teacher=token_logp(teacher_logits, tokens),
        entropy=-(old.exp() * old).sum(-1),
        truncated=lengths == T,
        progress=progress,
        extras={"teacher_logits": teacher_logits},
    )
    return theta, batch, rewards, old_logits, tokens


def prepared(
    objective: Objective,
    seed: int = 0,
    empty_mask: bool = False,
    rows=None,
    on_policy: bool = False,
    tool_span: str | None = None,
):
    """Fill a toy step for ``objective`` as the trainer would: only what it needs, extras, advantages,
    weights. ``rows``: the rows of the step this process holds (whole groups), default all."""
    theta, batch, rewards, old_logits, tokens = toy_step(seed, empty_mask, tool_span=tool_span)
    needs = objective.needs
    batch.logp_old = None if on_policy or "logp_old" not in needs else batch.logp_old
    batch.logp_ref = batch.logp_ref if "logp_ref" in needs else None
    batch.entropy = batch.entropy if "entropy" in needs else None
    batch.logp_teacher = batch.logp_teacher if "logp_teacher" in needs else None
    batch.logp_trainer = token_logp(old_logits, tokens) if "logp_trainer" in needs else None  # the rollout policy
    if rows is not None:
        theta, batch, rewards, old_logits, tokens = (
            theta[rows],
            batch.rows(rows),
            rewards[rows],
            old_logits[rows],
            tokens[rows],
        )
    teacher = batch.extras["teacher_logits"]
    batch.extras = objective.on_logits(old_logits, tokens, batch.mask, batch.group_ids, teacher_logits=teacher)
    batch.extras["teacher_logits"] = teacher
    metrics = Metrics()
    batch.advantages = objective.advantages(rewards, batch, metrics)
    weights = objective.prepare(batch, metrics)
    return theta, batch, weights, tokens, metrics


def step_gradient(
    objective: Objective,
    micro_batches: int,
    seed: int = 0,
    empty_mask: bool = False,
    rows=None,
    split_seed: int = 0,
    on_policy: bool = False,
    active_only: bool = False,
    tool_span: str | None = None,
):
    """(total loss, d loss / d theta) of one optimizer step split into ``micro_batches`` random row sets;
    ``active_only``: of the rows :meth:`Objective.active_rows` keeps only, as the trainer runs them."""
    theta, batch, weights, tokens, metrics = prepared(objective, seed, empty_mask, rows, on_policy, tool_span)
    theta = theta.clone().requires_grad_(True)
    order = torch.randperm(batch.n_rows, generator=torch.Generator().manual_seed(split_seed))
    if active_only:
        order = order[objective.active_rows(batch, weights)[order]]
    total = 0.0
    for part in order.chunk(micro_batches):
        logits = theta[part]
        logp = token_logp(logits, tokens[part])
        entropy = -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum(-1)
        rows = batch.rows(part)
        active = objective.active_tokens(rows, weights[part])  # logits packed as the trainer does
        loss = objective.loss(
            logp,
            rows,
            weights[part],
            metrics,
            entropy=entropy,
            logits=logits[active],
            teacher_logits=rows.extras["teacher_logits"][active],
        )
        loss.backward()
        total += float(loss.detach())
    return total, torch.zeros_like(theta) if theta.grad is None else theta.grad, metrics


def two_rank_worker(rank: int, world: int, port: int, out_path: str) -> None:
    """One of ``world`` gloo processes: every preset's DDP-averaged gradient when this rank holds a
    contiguous block of whole groups of the toy step; rank 0 saves {preset: gradient}."""
    import os

    import torch.distributed as dist

    from rlkit.objectives import PRESETS, build_objective
    from tests.process_groups import leave

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    groups_per_rank = N_GROUPS // world
    rows = torch.arange(rank * groups_per_rank * G, (rank + 1) * groups_per_rank * G)
    out = {}
    for name in PRESETS:
        _, grad, _ = step_gradient(build_objective({"preset": name}), 2, rows=rows)
        full = torch.zeros(N_GROUPS * G, T, V, dtype=grad.dtype)
        full[rows] = grad
        dist.all_reduce(full)  # what DDP does: the mean over ranks
        out[name] = full / world
    if rank == 0:
        torch.save(out, out_path)
    leave()
