"""``rlkit train RECIPE OVERRIDES...`` that first records how much of the teacher each rank holds.

Run under ``accelerate launch`` with a ZeRO-3 config. Before training, rank 0 writes
OUTPUT_DIR/teacher_partition.json: {"full": elements of the teacher (DeepSpeed's ``ds_numel``),
"held": [elements of its ZeRO-3 partition (``ds_tensor``) on each rank], "materialized": [elements of
the parameters' own data on each rank: 0 while partitioned]}.
"""

import json
import sys
from pathlib import Path

from accelerate.utils import gather_object

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer


def main():
    recipe = load_recipe(sys.argv[1], sys.argv[2:])
    trainer = Trainer(recipe)
    params = list(trainer.teacher.parameters())
    held = gather_object([sum(p.ds_tensor.numel() for p in params)])
    materialized = gather_object([sum(p.numel() for p in params)])
    if trainer.accelerator.is_main_process:
        report = {"full": sum(p.ds_numel for p in params), "held": held, "materialized": materialized}
        (Path(recipe.output_dir) / "teacher_partition.json").write_text(json.dumps(report))
    trainer.train()


if __name__ == "__main__":
    main()
