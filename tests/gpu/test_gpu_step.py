"""RL steps on GPUs: every tensor of the step on the accelerator's device, one GPU and two-GPU DDP (NCCL).

Skipped without CUDA (see tests/conftest.py); run them on a GPU machine with `pytest -q tests/gpu`.
"""

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer
from tests.ports import free_port
from tests.trainer.launching import ACCELERATE, ROOT

SMALL = [
    "model.warm_start=null",
    "log.trackers=[]",
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=4",
    "data.eval_size=8",
    "log.every=1",
    "log.eval_every=0",
]


def tensors_of(batch) -> dict[str, torch.Tensor]:
    out = {f.name: getattr(batch, f.name) for f in fields(batch) if torch.is_tensor(getattr(batch, f.name))}
    return out | {f"extras.{k}": v for k, v in getattr(batch, "extras", {}).items()}


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["grpo", "dapo", "d3s", "tw_grpo"])
def test_every_tensor_of_a_step_is_on_the_gpu(preset, tmp_path):
    trainer = Trainer(
        load_recipe("recipes/quickstart.yaml", [*SMALL, f"objective={{preset: {preset}}}", f"output_dir={tmp_path}"])
    )
    device = trainer.accelerator.device
    assert device.type == "cuda"
    metrics = Metrics()
    rollout = trainer.collect(1, metrics)
    batch = trainer.score(rollout, progress=0.5, metrics=Metrics())
    batch.advantages = trainer.objective.advantages(rollout.rewards, batch, metrics)
    for name, t in {**tensors_of(rollout), **tensors_of(batch)}.items():
        assert t.device.type == "cuda", f"{name} is on {t.device}"
    trainer.update(batch, 1, metrics)
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    result = trainer._reduce(metrics)
    assert result["train/skipped_updates"] == 0 and result["train/grad_norm"] >= 0


def run_steps(command: list[str], output_dir) -> list[dict]:
    result = subprocess.run(
        [
            *command,
            "-m",
            "rlkit.cli",
            "train",
            "recipes/quickstart.yaml",
            *SMALL,
            "trainer.steps=3",
            f"output_dir={output_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RLKIT_CACHE": str(output_dir / "cache")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.gpu
def test_one_gpu_run(tmp_path):
    metrics = run_steps([sys.executable], tmp_path)
    assert [m["step"] for m in metrics if "train/lr" in m] == [1, 2, 3]


@pytest.mark.gpu(2)
def test_two_gpu_ddp_run(tmp_path):
    launcher = [
        ACCELERATE,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    metrics = run_steps(launcher, tmp_path)
    assert [m["step"] for m in metrics if "train/lr" in m] == [1, 2, 3]
