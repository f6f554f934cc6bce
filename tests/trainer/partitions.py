"""``rlkit train RECIPE OVERRIDES...`` that first records how much of each model each rank stores.

Run under ``accelerate launch`` (ZeRO-3 or FSDP2). After setup, before training, rank 0 writes
OUTPUT_DIR/partitions.json: for the policy ("model") and, when the objective loads them, "reference"
and "teacher": {"full": elements of the model, "held": [elements stored on each rank]}. A rank stores
a parameter's ZeRO-3 partition (DeepSpeed's ``ds_tensor``; ``ds_numel`` is the full size), its FSDP2
shard (the DTensor's local tensor), or else all of it.
"""

import json
import sys
from pathlib import Path

from accelerate.utils import gather_object
from torch.distributed.tensor import DTensor

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer


def stored(p) -> int:
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor.numel()
    return p.to_local().numel() if isinstance(p, DTensor) else p.numel()


def size(p) -> int:
    return p.ds_numel if hasattr(p, "ds_numel") else p.numel()


def main():
    recipe = load_recipe(sys.argv[1], sys.argv[2:])
    trainer = Trainer(recipe)
    report = {}
    for name in ("model", "reference", "teacher"):
        if getattr(trainer, name) is not None:
            params = list(getattr(trainer, name).parameters())
            report[name] = {"full": sum(map(size, params)), "held": gather_object([sum(map(stored, params))])}
    if trainer.accelerator.is_main_process:
        (Path(recipe.output_dir) / "partitions.json").write_text(json.dumps(report))
    trainer.train()


if __name__ == "__main__":
    main()
