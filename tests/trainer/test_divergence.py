"""A non-finite loss never reaches the weights, and a run that keeps producing one stops with a reason."""

import dataclasses

import pytest
import torch

from rlkit.advantages import AdvantageEstimator
from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer, TrainingDiverged
from rlkit.trainer.loop import MAX_BAD_STEPS


class NaNAdvantage(AdvantageEstimator):
    def __call__(self, rewards, group_ids):
        return torch.full_like(rewards, float("nan"))


def test_nan_loss_skips_updates_then_stops(tmp_path):
    recipe = load_recipe("recipes/quickstart.yaml", [
        f"output_dir={tmp_path}", "model.warm_start=null", "log.trackers=[]", "trainer.prompts_per_step=2",
        "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3", "data.eval_size=4", "trainer.steps=20"])
    trainer = Trainer(recipe)
    trainer.objective = dataclasses.replace(trainer.objective, advantage=NaNAdvantage())
    start = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(TrainingDiverged, match=f"non-finite loss or gradients in {MAX_BAD_STEPS} consecutive"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
