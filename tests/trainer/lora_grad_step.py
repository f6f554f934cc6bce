"""grad_step.py for a LoRA policy (grpo with its KL term): one optimizer step's gradient of the
adapters, in micro-batches of each size in ``--micro``, run directly or under ``accelerate launch``.

LoRA's B starts at zero, which leaves A and the KL term (policy = reference) without gradient; B is
first set to seeded random values, the same on every rank, so that every adapter weight and the KL
term take part. Rank 0 saves {micro: flat gradient of the adapters} to ``--out``.
"""

import argparse
import tempfile

import torch

from rlkit.trainer import Trainer
from tests.trainer.grad_step import recipe_for, step_gradient


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--micro", type=lambda s: s.split(","), required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe_for("grpo", tmp, "model.lora={r: 4}"))
        generator = torch.Generator().manual_seed(3)
        for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters():
            if "lora_B" in name:
                p.data.copy_(0.1 * torch.randn(p.shape, generator=generator))
        grads = {micro: step_gradient(trainer, micro) for micro in args.micro}
        if trainer.accelerator.is_main_process:
            torch.save(grads, args.out)
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
