"""A non-finite loss never reaches the weights, and a run that keeps producing one stops with a reason,
in one process and under DeepSpeed ZeRO-2 (whose engine steps inside backward)."""

import pytest
import torch

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer, TrainingDiverged
from rlkit.trainer.loop import MAX_BAD_STEPS
from tests.trainer.launching import launch

NAN = "objective.surrogate={type: tests.trainer.nan_parts:NaNSurrogate}"
SMALL = [
    "model.warm_start=null",
    "log.trackers=[]",
    "trainer.prompts_per_step=2",
    "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=3",
    "data.eval_size=4",
    "trainer.steps=20",
    NAN,
]


def test_nan_loss_skips_updates_then_stops(tmp_path):
    trainer = Trainer(
        load_recipe("recipes/quickstart.yaml", [f"output_dir={tmp_path}", *SMALL, "trainer.reward_workers=1"])
    )
    start = [p.detach().clone() for p in trainer.model.parameters()]
    workers = list(trainer.scorer.pool.workers)
    with pytest.raises(TrainingDiverged, match=f"non-finite loss or gradients in {MAX_BAD_STEPS} consecutive"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
    assert trainer.scheduler.last_epoch == 0  # skipped updates do not advance the schedule either
    for worker in workers:  # the verifier pool is closed however the run ends
        assert worker.process.wait(timeout=10) is not None


def test_nan_loss_stops_a_deepspeed_run(tmp_path, shared_cache):
    result = launch(
        "zero2",
        [
            "-m",
            "rlkit.cli",
            "train",
            "recipes/quickstart.yaml",
            f"output_dir={tmp_path}",
            *SMALL,
            "trainer.prompts_per_step=4",
            "log.eval_every=0",
        ],
        shared_cache,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"training stopped: non-finite loss or gradients in {MAX_BAD_STEPS} consecutive steps" in result.stderr
