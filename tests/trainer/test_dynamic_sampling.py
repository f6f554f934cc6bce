"""DAPO dynamic sampling in refill mode: groups whose rewards are all equal are replaced by fresh
groups, round after round, and a shortfall is filled with uninformative groups (masked later)."""

import pytest
import torch

from rewards.scoring import Scores
from rlkit.metrics import Metrics
from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer


class FakeScorer:
    """Rewards by rule from the row layout, as the trainer's reward scorer would return them."""

    def __init__(self, rule):
        self.rule = rule

    def __call__(self, prompts, completions, columns):
        return Scores(total=[self.rule(i, p, prompts) for i, p in enumerate(prompts)], per_verifier={}, metrics={})


RULES = {
    "constant": lambda i, p, prompts: 0.0,
    "odd_rows": lambda i, p, prompts: float(i % 2),
    # mixed rewards only in the group of the first prompt of each round
    "first_group_only": lambda i, p, prompts: float(i % 2) if p == prompts[0] else 0.0,
}


@pytest.fixture
def trainer_with(tmp_path):
    def build(rule: str) -> Trainer:
        overrides = [
            f"output_dir={tmp_path / 'run'}",
            "model.warm_start=null",
            "log.trackers=[]",
            "trainer.prompts_per_step=3",
            "trainer.mini_batches=1",
            "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=3",
            "objective.preset=dapo",
            "objective.selection=[{type: dynamic_sampling, mode: refill, max_rounds: 4}]",
        ]
        trainer = Trainer(load_recipe("recipes/quickstart.yaml", overrides))
        trainer.scorer = FakeScorer(RULES[rule])
        return trainer

    return build


def collect(trainer):
    metrics = Metrics()
    batch = trainer.collect(1, metrics)
    return batch, metrics.result()


def test_every_group_informative_needs_one_round(trainer_with):
    batch, metrics = collect(trainer_with("odd_rows"))
    assert metrics["rollout/refill_rounds"] == 1 and metrics["rollout/refill_shortfall_groups"] == 0
    assert batch.n_groups == 3 and len(batch) == 6


def test_no_informative_group_runs_every_round_and_keeps_the_batch_shape(trainer_with):
    batch, metrics = collect(trainer_with("constant"))
    assert metrics["rollout/refill_rounds"] == 4 and metrics["rollout/refill_shortfall_groups"] == 3
    assert batch.n_groups == 3 and len(batch) == 6 and batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]


def test_informative_groups_from_later_rounds_come_first(trainer_with):
    trainer = trainer_with("first_group_only")
    batch, metrics = collect(trainer)
    # one informative group per round: rounds 1..3 give the three groups
    assert metrics["rollout/refill_rounds"] == 3 and metrics["rollout/refill_shortfall_groups"] == 0
    firsts = [trainer.prompts_for(1, round)[0][0] for round in range(3)]
    assert batch.prompts[::2] == firsts
    assert torch.equal(batch.rewards, torch.tensor([0.0, 1.0] * 3))
