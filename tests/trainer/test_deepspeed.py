"""DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 with parameters and optimizer offloaded to CPU memory (2 CPU
processes, launched with the shipped configs) make the same update as DDP: one RL step (two optimizer
updates) in several micro-batches under ZeRO equals DDP with one micro-batch, weight for weight. The
recipe's clipping, active here, reaches DeepSpeed (the configs carry none). The DDP launch also builds
the warm start where the session's cache lacks it (one process trains it, the other waits for the cache). With optimizer offload, accelerate
swaps torch's AdamW for DeepSpeed's CPU Adam (its C++ op is JIT-compiled on first use, a few minutes, then
cached under TORCH_EXTENSIONS_DIR): the same arithmetic in fp32, in another order, hence the same tolerance."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.trainer.launching import launch

pytestmark = pytest.mark.slow  # four two-process launches, one with a JIT-compiled optimizer

MAX_GRAD_NORM = 0.01
RUN = [
    "-m",
    "rlkit.cli",
    "train",
    "recipes/quickstart.yaml",
    "trainer.steps=1",
    "model.warm_start={max_steps: 5, batch_size: 8, target_accuracy: 1.0}",
    "rewards=[{verifier: tests/trainer/parity_verifier.py:odd_length}]",
    "eval.metric=odd_length",
    "trainer.prompts_per_step=8",
    "rollout.samples_per_prompt=4",
    "data.eval_size=8",
    "log.eval_every=0",
    "log.trackers=[]",
    f"trainer.max_grad_norm={MAX_GRAD_NORM}",
]


def train(launcher: str, micro: int, output_dir: Path, cache: Path):
    result = launch(launcher, [*RUN, f"trainer.micro_batch_size={micro}", f"output_dir={output_dir}"], cache)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return AutoModelForCausalLM.from_pretrained(output_dir / "checkpoints" / "step-000001" / "model")


@pytest.fixture(scope="module")
def ddp_model(tmp_path_factory, shared_cache):
    out = tmp_path_factory.mktemp("ddp")
    model = train("ddp", 64, out, shared_cache)
    grad_norms = [
        m["train/grad_norm"]
        for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "train/grad_norm" in m
    ]
    assert grad_norms and grad_norms[0] > MAX_GRAD_NORM  # the step updated the weights, clipped
    return model


@pytest.mark.parametrize("launcher", ["zero2", "zero3", "zero3_offload"])
def test_zero_update_equals_ddp(ddp_model, shared_cache, launcher, tmp_path):
    model = train(launcher, 4, tmp_path, shared_cache)  # 16 rows per rank and mini-batch: 4 micro-batches
    differences = [(a - b).abs().max().item() for a, b in zip(model.parameters(), ddp_model.parameters())]
    assert max(differences) < 1e-5
