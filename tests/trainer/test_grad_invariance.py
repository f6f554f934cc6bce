"""One optimizer step gives the same gradient with 1 or 4 micro-batches or micro-batches by token budget, and
with 1 process or 2
under ``accelerate launch`` (gloo), for every objective preset, through the real trainer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit.objectives import PRESETS
from tests.ports import free_port
from tests.trainer.launching import LAUNCHERS

pytestmark = pytest.mark.slow  # its fixture launches two processes

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
# 4 prompts x 4 samples = 16 rows: one micro-batch of 16, four of 4, or by a budget of 10 tokens (rows
# of 5 to 13 tokens: one to two rows each, a row over the budget alone); on two ranks 8 rows each, in
# micro-batches of 2 (four per rank).
ONE_PROCESS = ["--micro", "16,4,t10"]
TWO_PROCESSES = ["--micro", "2"]


def run(cmd, env=None):
    result = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grads")
    run([sys.executable, str(HERE / "grad_step.py"), *ONE_PROCESS, "--out", str(tmp / "one.pt")])
    run(
        [
            *LAUNCHERS["ddp"],
            "--main_process_port",
            str(free_port()),
            str(HERE / "grad_step.py"),
            *TWO_PROCESSES,
            "--out",
            str(tmp / "two.pt"),
        ],
        env={"ACCELERATE_USE_CPU": "true"},
    )
    return torch.load(tmp / "one.pt"), torch.load(tmp / "two.pt")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_micro_batches_do_not_change_the_gradient(gradients, preset):
    one, _ = gradients
    assert one[preset, "16"].norm() > 0
    assert relative_error(one[preset, "4"], one[preset, "16"]) < 1e-5
    assert relative_error(one[preset, "t10"], one[preset, "16"]) < 1e-5


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_two_processes_give_the_gradient_of_one(gradients, preset):
    one, two = gradients
    assert relative_error(two[preset, "2"], one[preset, "16"]) < 1e-5
