"""launch/slurm.sbatch, run with stand-ins for srun, scontrol and rlkit: `rlkit launch`'s own parser reads
the recipe and the overrides word for word (spaces included), and the process count is nodes x GPUs per
node."""

import os
import subprocess
from pathlib import Path

from rlkit.cli import build_parser

ROOT = Path(__file__).parents[2]


def test_overrides_with_spaces_arrive_whole_and_processes_follow_the_gpus(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "srun": '#!/bin/bash\nexec "$@"\n',  # one task, this node
        "scontrol": "#!/bin/bash\necho node-a\necho node-b\n",
        "rlkit": f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/argv\n',
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_NODEID": "1",
    }
    override = "model.warm_start={max_steps: 5, batch_size: 8}"
    subprocess.run(
        ["bash", "launch/slurm.sbatch", "recipes/quickstart.yaml", override, "trainer.seed=3"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=30,
    )
    args = build_parser().parse_args((tmp_path / "argv").read_text().splitlines())
    assert (args.command, args.config) == ("launch", "multinode_zero3")
    assert args.recipe == "recipes/quickstart.yaml" and args.overrides == [override, "trainer.seed=3"]
    assert (args.num_processes, args.num_machines, args.machine_rank) == (8, 2, 1)
    assert args.main_process_ip == "node-a"
