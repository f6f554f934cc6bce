"""``rlkit launch CONFIG RECIPE [overrides] [-- accelerate flags]``: ``accelerate launch`` with a config
from ``launch/``, the recipe's precision, a process count, and on a machine without CUDA the flags a CPU
run needs (docs/architecture.md, "Running on a CPU"), so nobody has to remember them.

The command is built here and handed over with ``exec``; accelerate (torchrun, DeepSpeed) does the
launching. What the run then really gets is checked at start-up (rlkit/trainer/startup.py).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import yaml

CONFIGS = Path(__file__).parents[1] / "launch"  # of the source tree rlkit is installed from (pip install -e)
CPU_PROCESSES = 2  # per machine without CUDA, unless --num_processes says otherwise


class LaunchError(ValueError):
    """A launch that cannot run as asked; nothing was started."""


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def resolve_config(name: str) -> Path:
    """A shipped config by name (``zero3`` is ``launch/zero3.yaml``), or an accelerate config file."""
    path = Path(name) if Path(name).is_file() else CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise LaunchError(f"launch config {name!r}: no such file, and not one of {', '.join(config_names())}")
    return path


def accelerate_command(
    config: Path,
    recipe_args: list[str],
    mixed_precision: str,
    gpus: int,
    layout: dict[str, int | str | None],
    extra: list[str],
    env: dict[str, str],
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment that run ``rlkit train *recipe_args``.

    ``gpus``: CUDA devices on this machine (0: a CPU run). ``layout``: accelerate's ``num_processes``,
    ``num_machines``, ``machine_rank``, ``main_process_ip``, ``main_process_port`` (None: the config's);
    the process count defaults to one per GPU, or ``CPU_PROCESSES``, on each machine. ``extra``: more
    ``accelerate launch`` flags, passed as they are.
    """
    settings = yaml.safe_load(config.read_text())
    engine = settings.get("distributed_type")
    if not gpus and engine == "FSDP":
        raise LaunchError(
            f"{config}: accelerate's FSDP on a CPU neither shards nor synchronises gradients "
            "(docs/architecture.md); use a GPU machine, or ddp/zero3 here"
        )
    machines = layout.get("num_machines") or settings.get("num_machines", 1)
    layout = {**layout, "num_processes": layout.get("num_processes") or (gpus or CPU_PROCESSES) * machines}
    flags = [f for key, value in layout.items() if value is not None for f in (f"--{key}", str(value))]
    flags += ["--mixed_precision", mixed_precision]
    env = {k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"}  # it turns DeepSpeed into plain DDP
    if not gpus:
        flags += ["--dynamo_backend", "no"]
        if engine != "DEEPSPEED":  # DeepSpeed picks its CPU accelerator (and gloo) by itself
            flags.append("--multi_gpu")  # `--cpu` (or MULTI_CPU) would silently start one process
            env["ACCELERATE_USE_CPU"] = "true"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        *flags,
        *extra,
        "-m",
        "rlkit.cli",
        "train",
        *recipe_args,
    ]
    return command, env


def exec_launch(command: list[str], env: dict[str, str]) -> NoReturn:
    """Replace this process with the launch (signals and the exit code are then accelerate's)."""
    print(shlex.join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, env)
