"""One optimizer step's gradient through the real trainer, for every objective preset.

Run directly (one process) or under ``accelerate launch`` (two gloo processes). Every rank generates
the same full rollout batch with a fixed seed, keeps its contiguous block of groups, scores it with
fixed synthetic rewards, perturbs the old log-probs (so ratios differ from 1 and clipping acts) and
accumulates the gradient of one optimizer step in micro-batches of each size in ``--micro`` (rows, or
"tN": a budget of N tokens). Rank 0
saves {(preset, micro): flat gradient} to ``--out``. The distillation presets use the built-in teacher
without its warm start (a random model, quick to build, and far from the student). Gradients are read
after DDP's all-reduce, i.e. what the optimizer would use.
"""

import argparse
import tempfile

import torch

from rlkit.metrics import Metrics
from rlkit.objectives import PRESETS
from rlkit.recipe import load_recipe
from rlkit.rollout import HFEngine, sample
from rlkit.trainer import Trainer

N_PROMPTS, G = 4, 4
PROMPTS = ["12+34=", "7+5=", "40+2=", "99+99="]


def recipe_for(preset: str, output_dir: str, *extra: str):
    overrides = [
        f"objective={{preset: {preset}}}",
        "trainer.mini_batches=2",
        f"trainer.prompts_per_step={N_PROMPTS}",
        f"rollout.samples_per_prompt={G}",
        "rollout.max_new_tokens=6",
        "teacher={path: builtin:tiny-teacher}",
        "log.trackers=[]",
        "trainer.resume=false",
        f"output_dir={output_dir}",
    ]
    return load_recipe("recipes/quickstart.yaml", overrides + ["model.warm_start=null", *extra])


def step_gradient(trainer: Trainer, micro: str) -> torch.Tensor:
    """``micro``: rows per micro-batch ("4"), or a token budget ("t10": ``micro_batch_tokens``)."""
    tokens = micro.startswith("t")
    options = {
        "micro_batch_tokens": int(micro[1:]) if tokens else None,
        "micro_batch_size": 16 if tokens else int(micro),
    }
    recipe = trainer.recipe  # frozen: the trainer gets a variant of it between two gradients, not an edit
    trainer.recipe = recipe.model_copy(update={"trainer": recipe.trainer.model_copy(update=options)})
    world, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
    torch.manual_seed(1234)  # the same full batch on every rank
    with torch.no_grad():
        engine = HFEngine.on(
            trainer.accelerator.unwrap_model(trainer.model), trainer.tokenizer, trainer.engine.setup.eos_token_ids
        )
        full = sample(engine, PROMPTS, {"answer": ["0"] * N_PROMPTS}, trainer.sampling)
    g = torch.Generator().manual_seed(7)
    full.rewards = (torch.rand(len(full), generator=g) < 0.4).float()
    full.rewards[:G] = 1.0  # one group with all-equal rewards (no signal)
    noise = 0.3 * torch.randn(full.completion_ids.shape, generator=g)
    per_rank = N_PROMPTS // world
    keep = torch.zeros(N_PROMPTS, dtype=torch.bool)
    keep[rank * per_rank : (rank + 1) * per_rank] = True
    rollout = full.select_groups(keep)
    batch = trainer.score(rollout, progress=0.5, metrics=Metrics())
    if batch.logp_old is not None:  # the distillation presets are on-policy: no old log-probs
        batch.logp_old = batch.logp_old + noise[keep[full.group_ids]]
    batch.advantages = trainer.objective.advantages(rollout.rewards, batch)
    trainer.model.zero_grad(set_to_none=True)
    trainer.accumulate_gradients(batch, Metrics())
    trainable = [p for p in trainer.accelerator.unwrap_model(trainer.model).parameters() if p.requires_grad]
    return torch.cat([p.grad.flatten() for p in trainable])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--micro", type=lambda s: s.split(","), required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    grads = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            trainer = Trainer(recipe_for(preset, f"{tmp}/{preset}"))
            for micro in args.micro:
                grads[preset, micro] = step_gradient(trainer, micro)
        if trainer.accelerator.is_main_process:
            torch.save(grads, args.out)
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
