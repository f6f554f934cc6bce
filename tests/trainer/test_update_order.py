"""Epochs over one rollout batch: each deals the rank's whole groups into mini-batches in a fresh order,
seeded by (seed, step, epoch), so a resumed run repeats it and two epochs do not repeat each other; and
micro-batches by token budget."""

from collections import Counter

import torch

from rlkit.metrics import Metrics
from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer
from rlkit.trainer.loop import split_by_tokens

G, GROUPS = 2, 8


def mini_batches(trainer, step):
    seen = []
    trainer.optimizer_step = lambda batch, metrics: seen.append(batch.group_ids.tolist())
    rollout = trainer.collect(step, Metrics())
    batch = trainer.score(rollout, progress=0.0, metrics=Metrics())
    trainer.update(batch, step, Metrics())
    return seen


def test_each_epoch_deals_whole_groups_in_a_fresh_seeded_order(tmp_path):
    trainer = Trainer(
        load_recipe(
            "recipes/quickstart.yaml",
            [
                f"output_dir={tmp_path}",
                "model.warm_start=null",
                "log.trackers=[]",
                f"trainer.prompts_per_step={GROUPS}",
                f"rollout.samples_per_prompt={G}",
                "rollout.max_new_tokens=2",
                "trainer.mini_batches=2",
                "trainer.epochs_per_rollout=2",
            ],
        )
    )
    seen = mini_batches(trainer, step=1)
    assert len(seen) == 4  # 2 epochs x 2 mini-batches
    for epoch in (seen[:2], seen[2:]):
        counts = Counter(g for mini in epoch for g in mini)
        assert counts == {g: G for g in range(GROUPS)}  # every group once per epoch, whole
        assert all(len(mini) == GROUPS // 2 * G for mini in epoch)
    partition = lambda epoch: {frozenset(mini) for mini in epoch}  # noqa: E731
    assert partition(seen[:2]) != partition(seen[2:])
    assert mini_batches(trainer, step=1) == seen  # the same (seed, step): the same order


def test_token_budget_micro_batches_take_the_longest_rows_first():
    # rows 10..14 of 5, 13, 7, 3, 9 tokens, budget 12: 13 alone (over budget), 9 (9 + 7 > 12), 7 + 5, then 3
    rows, tokens = torch.arange(10, 15), torch.tensor([5.0, 13.0, 7.0, 3.0, 9.0])
    assert [c.tolist() for c in split_by_tokens(rows, tokens, 12)] == [[11], [14], [12, 10], [13]]
    assert [c.tolist() for c in split_by_tokens(rows, tokens, 100)] == [[11, 14, 12, 10, 13]]
