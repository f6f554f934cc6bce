"""Start-up refuses a launch that did not give the run what it asked for, with one line naming what was
asked and what the run got, before any training: the environment `accelerate launch` sets is checked
against the Accelerator the run really has and against the recipe (precision, clipping)."""

import os
import subprocess

import pytest
from accelerate import Accelerator

from rlkit.recipe import load_recipe
from rlkit.recipe.schema import TrainerConfig
from rlkit.trainer import Trainer
from rlkit.trainer.startup import LaunchRefused, check_launch
from tests.ports import free_port
from tests.trainer.launching import ACCELERATE, ROOT

LAUNCHED = {"ACCELERATE_MIXED_PRECISION": "no"}  # what every `accelerate launch` sets, at least


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {**LAUNCHED, "MASTER_PORT": "29500"},
            "launch asked for several processes, the run got 1: `accelerate launch "
            "--cpu` (or a MULTI_CPU config) starts one process",
        ),
        ({**LAUNCHED, "WORLD_SIZE": "2"}, "launch asked for 2 processes, the run got 1"),
        (
            {**LAUNCHED, "ACCELERATE_USE_DEEPSPEED": "true"},
            "launch asked for DeepSpeed, the run got NO: ACCELERATE_USE_CPU=true turns",
        ),
        (
            {**LAUNCHED, "ACCELERATE_USE_FSDP": "true"},
            "launch asked for FSDP, the run got NO on cpu: accelerate's FSDP needs GPUs",
        ),
        (
            {"ACCELERATE_MIXED_PRECISION": "bf16"},
            "launch asked for mixed precision bf16, the run got trainer.mixed_precision=no: the recipe sets it",
        ),
        (
            {**LAUNCHED, "ACCELERATE_GRADIENT_CLIPPING": "1.0"},
            "launch asked for gradient clipping 1.0, the run got trainer.max_grad_norm=0.5",
        ),
    ],
)
def test_refusals(env, message):
    with pytest.raises(LaunchRefused) as refused:
        check_launch(Accelerator(), TrainerConfig(max_grad_norm=0.5), env)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_launch_that_got_what_it_asked_for_passes():
    check_launch(Accelerator(), TrainerConfig(), {**LAUNCHED, "ACCELERATE_GRADIENT_CLIPPING": "1.0"})
    check_launch(Accelerator(), TrainerConfig(max_grad_norm=None), {"ACCELERATE_GRADIENT_CLIPPING": "0"})
    check_launch(Accelerator(), TrainerConfig(), {})  # `rlkit train`, no launcher


def test_trainer_refuses_before_the_warm_start(tmp_path, monkeypatch):
    """The recipe asks for a warm start that would train for minutes: the refusal comes first."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("recipes/quickstart.yaml", [f"output_dir={tmp_path / 'run'}", "log.trackers=[]"])
    with pytest.raises(LaunchRefused, match="launch asked for mixed precision fp16"):
        Trainer(recipe)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        # the real traps, each refused before building the model or the warm start
        (
            ["--cpu", "--num_processes", "2"],
            "error: launch asked for several processes, the run got 1: `accelerate "
            "launch --cpu` (or a MULTI_CPU config) starts one process; use `rlkit "
            "launch ddp RECIPE`",
        ),
        (
            [
                "--config_file",
                "launch/fsdp2.yaml",
                "--num_processes",
                "2",
                "--mixed_precision",
                "no",
            ],
            "error: launch asked for FSDP, the run got NO on cpu",
        ),
    ],
)
def test_plain_accelerate_launches_that_lose_processes_or_sharding_are_refused(flags, message, tmp_path):
    result = subprocess.run(
        [
            ACCELERATE,
            "launch",
            *flags,
            "--main_process_port",
            str(free_port()),
            "-m",
            "rlkit.cli",
            "train",
            "recipes/quickstart.yaml",
            f"output_dir={tmp_path / 'run'}",
            "log.trackers=[]",
        ],
        cwd=ROOT,
        env={**os.environ, "RLKIT_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0  # accelerate's launchers turn rlkit's exit code 2 into 1
    assert message in result.stderr
    assert not (tmp_path / "cache").exists()
