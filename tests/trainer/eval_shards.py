"""Held-out evaluation of the untrained builtin:tiny in generate calls of EVAL_CHUNK = 3 prompts.

Run directly (one process) or under ``accelerate launch``. With 7 held-out prompts on 2 ranks the
shards hold 4 and 3 prompts: unpadded, rank 0 would call ``generate`` twice and rank 1 once. Evaluates
greedily (k = 1), then with k = 3 seeded samples per prompt; rank 0 writes ``{greedy: record, sampled:
record}`` (:class:`EvalResult` records, with ``calls``: generate calls of each rank) to ``--out`` as JSON.
"""

import argparse
import json
import tempfile

from accelerate.utils import gather_object

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer, loop

OVERRIDES = [
    "model.warm_start=null",
    "data.eval_size=7",
    "trainer.prompts_per_step=4",
    "log.trackers=[]",
    "rewards=[{verifier: tests/trainer/parity_verifier.py:odd_code_sum}]",
    "eval.metric=odd_code_sum",
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    loop.EVAL_CHUNK = 3
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(load_recipe("recipes/quickstart.yaml", [*OVERRIDES, f"output_dir={tmp}"]))
        calls = 0
        generate = trainer.engine.generate

        def counted(*a, **kw):
            nonlocal calls
            calls += 1
            return generate(*a, **kw)

        trainer.engine.generate = counted
        records = {}
        for name, changes in (("greedy", {}), ("sampled", {"k": 3, "temperature": 1.5})):
            trainer.recipe = trainer.recipe.model_copy(update={"eval": trainer.recipe.eval.model_copy(update=changes)})
            calls = 0
            records[name] = {**trainer.evaluate().record(), "calls": gather_object([calls])}
        if trainer.accelerator.is_main_process:
            with open(args.out, "w") as f:
                json.dump(records, f)
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
