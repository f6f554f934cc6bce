"""`rlkit launch` on 2 GPUs: ZeRO-3 in bf16 passes the start-up checks (parameters partitioned, precision
as the recipe says) and trains; FSDP2 passes them (parameters sharded as DTensors) and its divergence
guard stops a run whose loss is NaN. Skipped without CUDA (see tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.trainer.loop import MAX_BAD_STEPS
from tests.ports import free_port

ROOT = Path(__file__).parents[2]
RLKIT = str(Path(sys.executable).parent / "rlkit")
SMALL = [
    "model.warm_start=null",
    "log.trackers=[]",
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=4",
    "data.eval_size=8",
    "log.eval_every=0",
    "trainer.mixed_precision=bf16",
]


def launch(config: str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            RLKIT,
            "launch",
            config,
            "recipes/quickstart.yaml",
            *SMALL,
            f"output_dir={tmp_path}",
            *overrides,
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, "RLKIT_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.gpu(2)
def test_zero3_bf16_run_passes_the_start_up_checks(tmp_path):
    result = launch("zero3", tmp_path, "trainer.steps=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "step-000002" / "model" / "config.json").is_file()


@pytest.mark.gpu(2)
def test_fsdp2_is_sharded_and_stops_a_nan_run(tmp_path):
    result = launch(
        "fsdp2", tmp_path, "trainer.steps=20", "objective.surrogate={type: tests.trainer.nan_parts:NaNSurrogate}"
    )
    assert result.returncode != 0 and "launch asked for" not in result.stderr, result.stderr[-3000:]
    assert f"training stopped: non-finite loss or gradients in {MAX_BAD_STEPS} consecutive steps" in result.stderr
