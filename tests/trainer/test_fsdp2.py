"""torch's FSDP2 (``fully_shard``) on 2 gloo processes under torchrun: the policy's parameters are
really sharded, and the trainer's gradient of one optimizer step (generation, scoring pass and
``accumulate_gradients`` on the sharded model) equals the one-process gradient. accelerate's own FSDP
does not shard on a CPU; launch/fsdp2.yaml is run on GPUs by tests/gpu/test_gpu_fsdp2.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ports import free_port

pytestmark = pytest.mark.slow  # a torchrun launch

ROOT = Path(__file__).parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def run(command: list[str], out: Path, cache: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"RLKIT_CACHE": str(cache)}
    result = subprocess.run(
        [*command, "-m", "tests.trainer.fsdp2_step", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_fsdp2_shards_and_gives_the_gradient_of_one_process(tmp_path, shared_cache):
    run([sys.executable], tmp_path / "one", shared_cache)
    run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port())], tmp_path / "two", shared_cache)
    one = torch.load(tmp_path / "one.rank0")
    ranks = [torch.load(tmp_path / f"two.rank{r}") for r in (0, 1)]
    sizes = [n for _, n in one["shards"]]
    for rank in ranks:  # every dimension of the tiny model is even: exactly half of each parameter per rank
        assert rank["shards"] == [[n // 2, n] for n in sizes]
    assert one["grad"].norm() > 0
    # each rank scored half of the groups, so only FSDP's reduce-scatter makes its gradient whole; fp32
    # sums in another order: measured 1.5e-8 at most, entries up to 0.17
    for rank in ranks:
        assert (rank["grad"] - one["grad"]).abs().max() < 1e-6
