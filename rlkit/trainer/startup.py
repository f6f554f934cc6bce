"""Start-up checks: the run has what its launch asked for, or it stops before any training.

accelerate falls back silently in several ways (docs/architecture.md, "Running on a CPU"): ``--cpu
--num_processes 2`` starts one process, ``ACCELERATE_USE_CPU`` turns a DeepSpeed launch into DDP, and
FSDP on a CPU neither shards nor synchronises. What was asked is in the environment that
``accelerate launch`` (and torchrun under it) gives every process:

==============================  =====================================================================
``WORLD_SIZE``                  processes, set by torchrun and DeepSpeed's launcher
``MASTER_PORT``, no WORLD_SIZE  accelerate's simple launcher was asked for several processes, started one
``ACCELERATE_USE_DEEPSPEED``    DeepSpeed (its ZeRO-3 partitioning is checked on the prepared model)
``ACCELERATE_USE_FSDP``         FSDP
``ACCELERATE_MIXED_PRECISION``  mixed precision (always set by ``accelerate launch``)
``ACCELERATE_GRADIENT_CLIPPING``  DeepSpeed's clipping, when a config or flag sets one
==============================  =====================================================================

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


def _refuse_if(mismatch: bool, what: str, asked, got, why: str) -> None:
    if mismatch:
        raise LaunchRefused(f"launch asked for {what} {asked}, the run got {got}: {why}")


def check_launch(accelerator: Accelerator, cfg: TrainerConfig, env: Mapping[str, str] = os.environ) -> None:
    """Processes, engine, ZeRO stage, backend, precision and clipping against what the launch asked for."""
    world, engine = accelerator.num_processes, accelerator.distributed_type
    if "WORLD_SIZE" not in env and "MASTER_PORT" in env and "ACCELERATE_MIXED_PRECISION" in env:
        raise LaunchRefused("launch asked for several processes, the run got 1: `accelerate launch --cpu` (or a "
                            "MULTI_CPU config) starts one process; use `rlkit launch ddp RECIPE`")
    _refuse_if(int(env.get("WORLD_SIZE", world)) != world, "processes", env.get("WORLD_SIZE"), world,
               "accelerate did not join the process group (multi-process CPU runs need gloo)")
    _refuse_if(_flag(env, "ACCELERATE_USE_DEEPSPEED") and engine != DistributedType.DEEPSPEED, "DeepSpeed",
               "", engine.value, "ACCELERATE_USE_CPU=true turns a DeepSpeed launch into DDP; unset it")
    _refuse_if(_flag(env, "ACCELERATE_USE_FSDP") and engine != DistributedType.FSDP, "FSDP", "", engine.value,
               "accelerate did not set FSDP up")
    _refuse_if(engine == DistributedType.FSDP and accelerator.device.type == "cpu", "FSDP on", "cpu",
               "no sharding", "accelerate's FSDP on a CPU neither shards nor synchronises gradients; use a GPU")
    if world > 1:
        backend, wanted = torch.distributed.get_backend(), "nccl" if accelerator.device.type == "cuda" else "gloo"
        _refuse_if(wanted not in backend, "collectives on", accelerator.device.type, backend,
                   f"{accelerator.device.type} processes need {wanted}")
    asked = env.get("ACCELERATE_MIXED_PRECISION", cfg.mixed_precision)
    _refuse_if(asked != cfg.mixed_precision, "mixed precision", asked, f"trainer.mixed_precision={cfg.mixed_precision}",
               "the recipe sets it; launch with `rlkit launch` or pass --mixed_precision "
               f"{cfg.mixed_precision}")
    _refuse_if(accelerator.mixed_precision != cfg.mixed_precision, "mixed precision", cfg.mixed_precision,
               accelerator.mixed_precision, "the DeepSpeed config file sets another one")
    clipping = cfg.max_grad_norm or 0.0  # DeepSpeed's 0 is off, the recipe's null
    if "ACCELERATE_GRADIENT_CLIPPING" in env:
        _refuse_if(float(env["ACCELERATE_GRADIENT_CLIPPING"]) != clipping, "gradient clipping",
                   env["ACCELERATE_GRADIENT_CLIPPING"], f"trainer.max_grad_norm={cfg.max_grad_norm}",
                   "the recipe sets it; drop gradient_clipping from the accelerate config")


def check_sharding(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Under ZeRO-3 every parameter is partitioned by DeepSpeed (it has a ``ds_id``); under FSDP every
    parameter is a DTensor (FSDP2) or the model is wrapped (FSDP1)."""
    plugin = accelerator.state.deepspeed_plugin
    params = list(model.parameters())
    if plugin is not None and plugin.zero_stage == 3:
        whole = sum(not hasattr(p, "ds_id") for p in params)
        _refuse_if(whole > 0, "ZeRO-3", "partitioned parameters", f"{whole} of {len(params)} whole",
                   "DeepSpeed did not partition the model")
    if accelerator.distributed_type == DistributedType.FSDP:
        whole = sum(not isinstance(p, DTensor) for p in params)
        _refuse_if(whole > 0 and not isinstance(model, FullyShardedDataParallel), "FSDP", "sharded parameters",
                   f"{whole} of {len(params)} whole", "accelerate did not shard the model")


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true")
