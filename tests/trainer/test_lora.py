"""PEFT LoRA (recipes/lora.yaml, tiny settings) through the real trainer.

In this process: only the adapters train; the KL reference is the policy itself with its adapters
disabled (no second copy) and gives the base model's log-probs; the checkpoint's adapter loads with
peft and `rlkit export` merges it, both giving the trained policy's logits; a resumed run continues
exactly as an uninterrupted one. Through the CLI: the adapters are added after the (full-parameter)
warm start. Under `accelerate launch`: two processes give the adapters' gradient of one.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM

import rlkit.models
from rlkit.metrics import Metrics
from rlkit.models import builtin_tiny_path, check_quantization_support
from rlkit.recipe import load_recipe
from rlkit.recipe.schema import LoraSettings
from rlkit.trainer import Trainer
from rlkit.trainer.checkpoint import export_merged
from tests.ports import free_port
from tests.trainer.launching import LAUNCHERS, ROOT

SMALL = [
    "model.warm_start=null",
    "rewards=[{verifier: tests/trainer/parity_verifier.py:odd_length}]",
    "eval.metric=odd_length",
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "data.eval_size=8",
    "log.trackers=[]",
    "log.eval_every=0",
]  # 2 mini-batches per step (quickstart): B moves in the first, A in the second
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def lora_trainer(output_dir, steps: int) -> Trainer:
    return Trainer(load_recipe("recipes/lora.yaml", [*SMALL, f"output_dir={output_dir}", f"trainer.steps={steps}"]))


def live_parameters() -> dict[int, torch.nn.Parameter]:
    import gc

    gc.collect()
    return {id(o): o for o in gc.get_objects() if type(o) is torch.nn.Parameter}


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step LoRA run (its final checkpoint saved), the weights it started from, the parameters
    created while the trainer was built."""
    out = tmp_path_factory.mktemp("lora")
    existing = live_parameters()
    trainer = lora_trainer(out, steps=2)
    created = {i: p for i, p in live_parameters().items() if i not in existing}
    start = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    return trainer, start, created, out


def test_only_the_adapters_change(run):
    trainer, start, _, _ = run
    after = dict(trainer.model.named_parameters())
    adapters = {k for k in after if is_adapter(k)}
    assert adapters and len(adapters) < len(after)
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == {id(after[k]) for k in adapters}
    for name, p in after.items():
        if is_adapter(name):
            assert not torch.equal(p, start[name]), f"adapter {name} did not train"
        else:
            assert torch.equal(p, start[name]), f"base weight {name} changed"
            assert not p.requires_grad


def test_the_reference_is_the_policy_itself(run):
    trainer, _, created, _ = run
    assert trainer.reference.model is trainer.model
    # every parameter the trainer brought into memory belongs to the policy: no second copy anywhere
    assert set(created) == {id(p) for p in trainer.model.parameters()}


def completion_logp(model, prompt: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """log p(completion | prompt) per token, one unpadded row, full log-softmax: independent of the
    trainer's padded, ``logits_to_keep`` and ``selective_log_softmax`` path."""
    with torch.no_grad():
        logits = model(torch.cat([prompt, completion])[None]).logits[0, len(prompt) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, completion[:, None])[:, 0]


def test_the_kl_reference_is_the_base_model(run):
    trainer, *_ = run
    rollout = trainer.collect(3, Metrics())
    batch = trainer.score(rollout, progress=0.5, metrics=Metrics())
    base = AutoModelForCausalLM.from_pretrained(builtin_tiny_path())
    policy_gap = 0.0
    for row in range(batch.n_rows):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
        completion = batch.completion_ids[row][batch.mask[row].bool()]
        expected = completion_logp(base, prompt, completion)
        # fp32, the same weights: only padding, matmul shapes and the log-softmax routine differ
        # (rounding ~1e-7 relative); the adapters move log-probs by > 1e-2 (asserted below)
        torch.testing.assert_close(batch.logp_ref[row, : len(completion)], expected, rtol=0, atol=1e-5)
        policy = completion_logp(trainer.model, prompt, completion)
        policy_gap = max(policy_gap, (policy - expected).abs().max().item())
    assert policy_gap > 1e-2


def test_the_saved_adapter_loads_with_peft(run):
    trainer, _, _, out = run
    adapter = out / "checkpoints" / "step-000002" / "model"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(
        builtin_tiny_path(), attn_implementation=trainer.model.config._attn_implementation
    )
    loaded = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, trainer.model(IDS).logits)  # the same weights, the same ops


def test_the_merged_export_loads_with_transformers(run, tmp_path):
    trainer, _, _, out = run
    assert export_merged(out, tmp_path / "merged") == out / "checkpoints" / "step-000002"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any(is_adapter(name) for name, _ in merged.named_parameters())
    with torch.no_grad():
        # x (W + s B A)^T instead of x W^T + s (x A^T) B^T: fp32 rounding, ~1e-6 on logits of size ~1
        torch.testing.assert_close(merged(IDS).logits, trainer.model(IDS).logits, rtol=0, atol=1e-5)


def test_export_refuses_a_full_model_run(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "step-000001"
    (checkpoint / "model").mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 1}')
    with pytest.raises(ValueError, match="is a full model, not a LoRA adapter"):
        export_merged(tmp_path, tmp_path / "merged")


def test_a_resumed_run_continues_as_an_uninterrupted_one(run, tmp_path):
    _, _, _, out = run
    straight = lora_trainer(tmp_path / "straight", steps=3)
    straight.train()
    shutil.copytree(out, tmp_path / "resumed")
    resumed = lora_trainer(tmp_path / "resumed", steps=3)  # from the fixture's step-2 checkpoint
    assert resumed.train()["resumed_from"] == 2
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name  # adapters, optimizer state and RNG all restored


def test_4bit_without_cuda_stops_at_start_up():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="load_in_4bit: 4-bit weights .* need a CUDA device"):
        check_quantization_support(LoraSettings(load_in_4bit=True))


def test_4bit_without_bitsandbytes_stops_at_start_up(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rlkit.models, "is_bitsandbytes_available", lambda: False)
    with pytest.raises(RuntimeError, match="load_in_4bit: bitsandbytes is not installed"):
        check_quantization_support(LoraSettings(load_in_4bit=True))


@pytest.mark.slow
def test_lora_is_added_after_the_warm_start(tmp_path, shared_cache):
    """Through the CLI, with a short warm start (test_deepspeed.py's, so usually found in the session's
    cache): the adapter's base is the warm-started folder."""
    env = {**os.environ, "RLKIT_CACHE": str(shared_cache)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlkit.cli",
            "train",
            "recipes/lora.yaml",
            *SMALL[1:],
            "trainer.steps=1",
            "model.warm_start={max_steps: 5, batch_size: 8, target_accuracy: 1.0}",
            f"output_dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    base = Path(
        PeftConfig.from_pretrained(tmp_path / "run" / "checkpoints" / "step-000001" / "model").base_model_name_or_path
    )
    assert base.parent == shared_cache / "warm_start"
    assert json.loads((base / "warm_start.json").read_text())["steps"] == 5


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_grads")
    script = ["-m", "tests.trainer.lora_grad_step"]
    for command, env in (
        ([sys.executable, *script, "--micro", "16,4", "--out", str(tmp / "one.pt")], {}),
        (
            [
                *LAUNCHERS["ddp"],
                "--main_process_port",
                str(free_port()),
                *script,
                "--micro",
                "2",
                "--out",
                str(tmp / "two.pt"),
            ],
            {"ACCELERATE_USE_CPU": "true"},
        ),
    ):
        result = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(tmp / "one.pt"), torch.load(tmp / "two.pt")


@pytest.mark.slow
def test_two_processes_give_the_adapter_gradient_of_one(gradients):
    one, two = gradients
    # r = 4 on 4 layers: A [r,in] and B [out,r] for q, k, v, o (128 -> 128) and gate, up, down (128 <-> 512)
    assert one["16"].numel() == 4 * 4 * (4 * (128 + 128) + 3 * (128 + 512)) and one["16"].norm() > 0
    # fp32 sums of the same terms in another order (per rank, then DDP's all-reduce): rounding ~1e-7
    # relative; a lost world-size factor or a missing rank's rows would be off by ~0.5 or more
    for micro, grad in (("4", one["4"]), ("2", two["2"])):
        assert float((grad - one["16"]).norm() / one["16"].norm()) < 1e-5, micro
