"""Start-up checks: the run has what its launch asked for, or it stops before any training.

accelerate falls back silently in several ways (docs/architecture.md, "Running on a CPU"): ``--cpu
--num_processes 2`` starts one process, ``ACCELERATE_USE_CPU`` turns a DeepSpeed launch into DDP, and
FSDP on a CPU neither shards nor synchronises. What was asked is in the environment that
``accelerate launch`` (and torchrun under it) gives every process:

================================  ========================================================================
``WORLD_SIZE``                    processes, set by torchrun and DeepSpeed's launcher
``MASTER_PORT``, no WORLD_SIZE    accelerate's simple launcher was asked for several processes, started one
``ACCELERATE_USE_DEEPSPEED``      DeepSpeed (its ZeRO-3 partitioning is checked on the prepared model)
``ACCELERATE_USE_FSDP``           FSDP (its sharding is checked on the prepared model)
``ACCELERATE_MIXED_PRECISION``    mixed precision (always set by ``accelerate launch``)
``ACCELERATE_GRADIENT_CLIPPING``  DeepSpeed's clipping, when a config or flag sets one
================================  ========================================================================

The recipe is the one source of precision and clipping (``trainer.mixed_precision``,
``trainer.max_grad_norm``): a launch asking for another value is refused, not overridden.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor

from rlkit.recipe.schema import TrainerConfig


class LaunchRefused(RuntimeError):
    """The launch did not give the run what it asked for; raised before any training."""


def _refuse_if(mismatch: bool, asked: str, got, why: str) -> None:
    if mismatch:
        raise LaunchRefused(f"launch asked for {asked}, the run got {got}: {why}")


def check_launch(accelerator: Accelerator, cfg: TrainerConfig, env: Mapping[str, str] = os.environ) -> None:
    """Processes, engine, backend, precision and clipping against what the launch asked for."""
    _check_processes(accelerator, env)
    _check_engine(accelerator, env)
    _check_recipe_settings(accelerator, cfg, env)


def _check_processes(accelerator: Accelerator, env: Mapping[str, str]) -> None:
    world = accelerator.num_processes
    _refuse_if(
        "WORLD_SIZE" not in env and "MASTER_PORT" in env and "ACCELERATE_MIXED_PRECISION" in env,
        "several processes",
        world,
        "`accelerate launch --cpu` (or a MULTI_CPU config) starts one process; use `rlkit launch ddp RECIPE`",
    )
    _refuse_if(
        int(env.get("WORLD_SIZE", world)) != world,
        f"{env.get('WORLD_SIZE')} processes",
        world,
        "accelerate did not join the process group (multi-process CPU runs need gloo)",
    )
    if world > 1:
        device = accelerator.device.type
        backend, wanted = torch.distributed.get_backend(), "nccl" if device == "cuda" else "gloo"
        _refuse_if(wanted not in backend, f"{device} processes", f"{backend} collectives", f"{device} needs {wanted}")


def _check_engine(accelerator: Accelerator, env: Mapping[str, str]) -> None:
    engine, device = accelerator.distributed_type, accelerator.device.type
    _refuse_if(
        _flag(env, "ACCELERATE_USE_DEEPSPEED") and engine != DistributedType.DEEPSPEED,
        "DeepSpeed",
        engine.value,
        "ACCELERATE_USE_CPU=true turns a DeepSpeed launch into DDP; unset it",
    )
    fsdp = _flag(env, "ACCELERATE_USE_FSDP") or engine == DistributedType.FSDP
    _refuse_if(
        fsdp and (engine != DistributedType.FSDP or device == "cpu"),
        "FSDP",
        f"{engine.value} on {device}",
        "accelerate's FSDP needs GPUs (on a CPU it neither shards nor synchronises gradients)",
    )


def _check_recipe_settings(accelerator: Accelerator, cfg: TrainerConfig, env: Mapping[str, str]) -> None:
    """The recipe is the one source of precision and clipping: a launch asking for others is refused."""
    asked = env.get("ACCELERATE_MIXED_PRECISION", cfg.mixed_precision)
    _refuse_if(
        asked != cfg.mixed_precision,
        f"mixed precision {asked}",
        f"trainer.mixed_precision={cfg.mixed_precision}",
        f"the recipe sets it; use `rlkit launch` or --mixed_precision {cfg.mixed_precision}",
    )
    _refuse_if(
        accelerator.mixed_precision != cfg.mixed_precision,
        f"mixed precision {cfg.mixed_precision}",
        accelerator.mixed_precision,
        "the DeepSpeed config file sets another one",
    )
    if "ACCELERATE_GRADIENT_CLIPPING" in env:  # DeepSpeed's 0 is off, the recipe's null
        _refuse_if(
            float(env["ACCELERATE_GRADIENT_CLIPPING"]) != (cfg.max_grad_norm or 0.0),
            f"gradient clipping {env['ACCELERATE_GRADIENT_CLIPPING']}",
            f"trainer.max_grad_norm={cfg.max_grad_norm}",
            "the recipe sets it; drop gradient_clipping from the accelerate config",
        )


def check_sharding(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Under ZeRO-3 every parameter is partitioned by DeepSpeed (it has a ``ds_id``); under FSDP every
    parameter is a DTensor (FSDP2) or the model is wrapped (FSDP1)."""
    plugin = accelerator.state.deepspeed_plugin
    params = list(model.parameters())
    if plugin is not None and plugin.zero_stage == 3:
        whole = sum(not hasattr(p, "ds_id") for p in params)
        _refuse_if(
            whole > 0, "ZeRO-3", f"{whole} of {len(params)} parameters whole", "DeepSpeed did not partition the model"
        )
    if accelerator.distributed_type == DistributedType.FSDP:
        whole = sum(not isinstance(p, DTensor) for p in params)
        _refuse_if(
            whole > 0 and not isinstance(model, FullyShardedDataParallel),
            "FSDP",
            f"{whole} of {len(params)} parameters whole",
            "accelerate did not shard the model",
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true")
