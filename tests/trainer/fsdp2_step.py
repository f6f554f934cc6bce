"""One optimizer step's gradient through the trainer with the policy sharded by torch's FSDP2.

Run with ``torchrun --nproc_per_node 2`` (gloo): the policy is split with ``fully_shard`` (each
decoder layer, then the whole model), as ``launch/fsdp2.yaml`` does on GPUs; accelerate's FSDP does not
shard on a CPU (docs/architecture.md), so the trainer gets the sharded model from here. Run directly,
it is one unsharded process. Every rank generates the same full rollout batch with the (sharded)
policy, keeps its half of the groups, runs the trainer's scoring pass and ``accumulate_gradients`` in
micro-batches of 4 rows. Each rank saves {"grad": the full flat gradient, "shards": [local elements,
full elements] of each parameter} to ``OUT.rankR``. Under torchrun on a CPU accelerate reports no
distributed type (it neither wraps nor gathers), so this script talks to torch.distributed itself.
"""

import argparse
import tempfile

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from rlkit.metrics import Metrics
from rlkit.rollout import HFEngine, sample
from rlkit.trainer import Trainer
from tests.trainer.grad_step import N_PROMPTS, PROMPTS, recipe_for


def shard(model):
    for layer in model.model.layers:
        fully_shard(layer)
    return fully_shard(model)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe_for("grpo", tmp, "trainer.micro_batch_size=4"))
        world, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
        model = trainer.accelerator.unwrap_model(trainer.model)
        if world > 1:
            model = trainer.model = shard(model)
        torch.manual_seed(1234)  # the same full batch on every rank
        with torch.no_grad():
            engine = HFEngine.on(model, trainer.tokenizer, trainer.engine.setup.eos_token_ids, synced_gpus=world > 1)
            full_batch = sample(engine, PROMPTS, {"answer": ["0"] * N_PROMPTS}, trainer.sampling)
        full_batch.rewards = (torch.rand(len(full_batch), generator=torch.Generator().manual_seed(7)) < 0.4).float()
        keep = torch.arange(N_PROMPTS) // (N_PROMPTS // world) == rank
        rollout = full_batch.select_groups(keep)
        batch = trainer.score(rollout, progress=0.5, metrics=Metrics())
        batch.advantages = trainer.objective.advantages(rollout.rewards, batch)
        trainer.accumulate_gradients(batch, Metrics())
        grad = torch.cat([full(p.grad).flatten() for p in model.parameters()])
        shards = [
            [p.to_local().numel() if isinstance(p, DTensor) else p.numel(), p.numel()] for p in model.parameters()
        ]
        torch.save({"grad": grad, "shards": shards}, f"{args.out}.rank{rank}")
        if world > 1:
            dist.barrier()  # a gloo rank torn down while its peer still talks to it aborts the job


if __name__ == "__main__":
    main()
