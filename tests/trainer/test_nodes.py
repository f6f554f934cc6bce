"""Two simulated nodes on one machine (two `accelerate launch --num_machines 2` on loopback, one CPU
process each), each with its own RLKIT_CACHE and output_dir, as on nodes that share no file system:

- from empty caches, each node builds the built-in model and the warm start itself (node 1 on global
  rank 1), the run trains and the global main process saves a model that loads with transformers;
- a checkpoint that only node 0 holds is refused at start-up on both nodes, with a message, not a hang;
- with a shared output_dir the same checkpoint resumes on both nodes.

The last test does the same on two GPUs (NCCL) and is skipped without them.
"""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.cache import MARKER
from tests.trainer.launching import launch_nodes

pytestmark = pytest.mark.slow  # two-node runs, each from empty caches

RUN = [
    "-m",
    "rlkit.cli",
    "train",
    "recipes/quickstart.yaml",
    "model.warm_start={max_steps: 2, batch_size: 8, eval_every: 2, val_size: 8, target_accuracy: 1.0}",
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "data.eval_size=8",
    "log.eval_every=0",
    "log.trackers=[]",
]
TIMEOUT = 600  # seconds; a fresh two-node run takes about 2 min on a busy 2-core machine


def run_nodes(output_dirs, caches, steps, devices=None):
    """``steps`` steps on two nodes; ``devices``: each node's GPU (None: CPU processes, gloo)."""
    args = [[*RUN, f"trainer.steps={steps}", f"output_dir={out}"] for out in output_dirs]
    envs = [
        {
            "RLKIT_CACHE": str(cache),
            **({"ACCELERATE_USE_CPU": "true"} if devices is None else {"CUDA_VISIBLE_DEVICES": str(device)}),
        }
        for cache, device in zip(caches, devices or [None, None])
    ]
    return launch_nodes(args, envs, TIMEOUT)


def model_folder(output_dir, step):
    return output_dir / "checkpoints" / f"step-{step:06d}" / "model"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """One step on two nodes that share nothing: their caches and output_dirs."""
    caches = [tmp_path_factory.mktemp(f"cache{rank}") for rank in range(2)]
    outs = [tmp_path_factory.mktemp(f"out{rank}") for rank in range(2)]
    results = run_nodes(outs, caches, steps=1)
    for result in results:
        assert result.returncode == 0, result.stdout[-4000:]
    return caches, outs


def test_nodes_with_their_own_folders_train_and_save_a_model(nodes):
    caches, outs = nodes
    model = AutoModelForCausalLM.from_pretrained(model_folder(outs[0], 1))
    assert AutoTokenizer.from_pretrained(model_folder(outs[0], 1)).eos_token == "</s>"
    assert sum(p.numel() for p in model.parameters()) == 1_062_528  # builtin:tiny
    assert not model_folder(outs[1], 1).exists()  # the model is written by the global main process only
    # node 1 built its caches on global rank 1: complete folders, the same start model as node 0's
    for kind in ("models", "warm_start"):
        assert [p.is_dir() and (p / MARKER).is_file() for p in (caches[1] / kind).iterdir()] == [True]
    built = [AutoModelForCausalLM.from_pretrained(cache / "models" / "tiny-llama-char-v2") for cache in caches]
    assert all(torch.equal(a, b) for a, b in zip(built[0].state_dict().values(), built[1].state_dict().values()))


def test_checkpoint_on_one_node_only_is_refused_at_start_up(nodes):
    caches, outs = nodes
    results = run_nodes(outs, caches, steps=2)  # node 0 holds step 1, node 1 has no checkpoint
    for result in results:
        assert result.returncode != 0, result.stdout[-4000:]  # the launcher reports its worker's exit 2 as 1
        assert (
            "error: rank 0 resumes from checkpoints/step-000001 of its output_dir, but rank(s) [1] do not "
            "find that checkpoint in theirs"
        ) in result.stdout
    assert not model_folder(outs[0], 2).exists()


def test_checkpoint_in_a_shared_output_dir_resumes_on_both_nodes(nodes, tmp_path):
    caches, outs = nodes
    shared = tmp_path / "shared"
    for out in outs:  # what a shared file system would hold: every rank's writes
        shutil.copytree(out, shared, dirs_exist_ok=True)
    results = run_nodes([shared, shared], caches, steps=2)
    for result in results:
        assert result.returncode == 0, result.stdout[-4000:]
    summary = json.loads((shared / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["resumed_from"] == 1
    AutoModelForCausalLM.from_pretrained(model_folder(shared, 2))


@pytest.mark.gpu(2)
def test_two_gpu_nodes_train_then_refuse_a_checkpoint_on_one_node(tmp_path):
    """The same on one GPU per node: NCCL carries rank 0's choice and the ranks' answers as objects."""
    caches, outs = [tmp_path / f"cache{rank}" for rank in range(2)], [tmp_path / f"out{rank}" for rank in range(2)]
    for result in run_nodes(outs, caches, steps=1, devices=[0, 1]):
        assert result.returncode == 0, result.stdout[-4000:]
    AutoModelForCausalLM.from_pretrained(model_folder(outs[0], 1))
    for result in run_nodes(outs, caches, steps=2, devices=[0, 1]):
        assert result.returncode != 0 and "do not find that checkpoint" in result.stdout, result.stdout[-4000:]
