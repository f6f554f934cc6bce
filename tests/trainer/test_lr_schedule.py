"""The learning-rate schedule steps once per optimizer update, whatever the number of processes or the
engine: a linear schedule with warmup gives the same LR sequence on 1 process, 2 DDP processes and 2
DeepSpeed ZeRO-2 processes, equal to the one worked out by hand."""

import json

import pytest

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer
from tests.trainer.launching import launch

LR = 1e-3
OVERRIDES = [
    "model.warm_start=null",
    "log.trackers=[]",
    "trainer.steps=3",
    "trainer.mini_batches=2",
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=3",
    "data.eval_size=4",
    "log.every=1",
    "log.eval_every=0",
    f"trainer.lr={LR}",
    "trainer.lr_schedule=linear",
    "trainer.warmup_steps=2",
]
# 3 steps x 2 mini-batches = 6 updates; transformers' linear schedule with 2 warmup updates gives the k-th
# update (k = 0..5) the factor k/2 while k < 2, then (6-k)/4: 0, 1/2, 1, 3/4, 1/2, 1/4. The logged LR of
# a step is the mean over its two updates.
EXPECTED = [LR * (0 + 0.5) / 2, LR * (1 + 0.75) / 2, LR * (0.5 + 0.25) / 2]


def logged_lrs(output_dir) -> list[float]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["train/lr"] for m in lines if "train/lr" in m]


def test_one_process(tmp_path, shared_cache, monkeypatch):
    monkeypatch.setenv("RLKIT_CACHE", str(shared_cache))
    Trainer(load_recipe("recipes/quickstart.yaml", [*OVERRIDES, f"output_dir={tmp_path}"])).train()
    assert logged_lrs(tmp_path) == pytest.approx(EXPECTED, rel=1e-9)


@pytest.mark.parametrize("launcher", ["ddp", "zero2"])
def test_two_processes(launcher, tmp_path, shared_cache):
    command = ["-m", "rlkit.cli", "train", "recipes/quickstart.yaml", *OVERRIDES, f"output_dir={tmp_path}"]
    result = launch(launcher, command, shared_cache)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert logged_lrs(tmp_path) == pytest.approx(EXPECTED, rel=1e-9)
