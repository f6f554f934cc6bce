"""launch/fsdp2.yaml on 2 GPUs: accelerate's FSDP2 through the trainer's own code paths. The policy
and the distillation teacher are sharded; generation runs with synced_gpus; two steps make the same
weights as DDP; the step-1 checkpoint (a consolidated model folder that loads with transformers, and
the ranks' sharded state) resumes to the uninterrupted run's step 2.

Skipped without 2 CUDA devices (see tests/conftest.py); run on a GPU machine with `pytest -q tests/gpu`.
"""

import json
import os
import shutil
import subprocess

import pytest

from tests.ports import free_port
from tests.trainer.launching import ACCELERATE, ROOT, max_difference, model_at

# on-policy distillation, both models untrained; 2 steps, a checkpoint after each (as tests/trainer/test_zero3.py)
OPD = [
    "recipes/presets/opd.yaml",
    "model.warm_start=null",
    "teacher.warm_start=null",
    "trainer.steps=2",
    "trainer.save_every=1",
    "trainer.prompts_per_step=8",
    "data.eval_size=8",
    "log.eval_every=0",
    "log.trackers=[]",
]


def run(config: str, script: list[str], overrides: list[str], output_dir):
    command = [
        ACCELERATE,
        "launch",
        "--config_file",
        f"launch/{config}.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        *script,
        *OPD,
        *overrides,
        f"output_dir={output_dir}",
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RLKIT_CACHE": str(output_dir.parent / "cache")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


@pytest.mark.gpu(2)
def test_fsdp2_shards_trains_like_ddp_and_resumes(tmp_path):
    fsdp = run("fsdp2", ["tests/trainer/partitions.py"], ["trainer.micro_batch_size=4"], tmp_path / "fsdp")
    partitions = json.loads((fsdp / "partitions.json").read_text())
    for name in ("model", "teacher"):  # every dimension of the tiny models is even: half of each on each rank
        assert partitions[name]["held"] == [partitions[name]["full"] // 2] * 2, name

    # fp32 (no mixed precision, no TF32 matmuls by default): sums in another order, as on CPU
    ddp = run("ddp", ["-m", "rlkit.cli", "train"], ["trainer.micro_batch_size=64"], tmp_path / "ddp")
    for step in (1, 2):
        assert max_difference(model_at(ddp, step), model_at(fsdp, step)) < 1e-5

    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp / "checkpoints" / "step-000001", resumed / "checkpoints" / "step-000001")
    run("fsdp2", ["-m", "rlkit.cli", "train"], ["trainer.micro_batch_size=4"], resumed)
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"] == 1
    assert max_difference(model_at(resumed, 2), model_at(fsdp, 2)) < 1e-5
