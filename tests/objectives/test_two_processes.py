"""Every preset gives the same gradient on one process and on two gloo processes (DDP averaging),
with the step's groups split between the ranks in contiguous blocks."""

import torch
import torch.multiprocessing as mp
from objectives_toy import step_gradient, two_rank_worker

from rlkit.objectives import PRESETS, build_objective
from tests.ports import free_port


def test_every_preset_has_the_same_gradient_on_one_and_two_processes(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(two_rank_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    two = torch.load(out)
    assert set(two) == set(PRESETS)
    for name in PRESETS:
        _, one, _ = step_gradient(build_objective({"preset": name}), 1)
        assert one.abs().sum() > 0
        torch.testing.assert_close(two[name], one, rtol=1e-9, atol=1e-12, msg=name)
