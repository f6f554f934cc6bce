"""QLoRA on a GPU (model.lora.load_in_4bit): the base is loaded in 4-bit NF4 by bitsandbytes, and a
run trains and saves only the adapters. Skipped without CUDA (tests/conftest.py) or bitsandbytes."""

import pytest
import torch

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer
from tests.trainer.test_lora import SMALL, is_adapter


@pytest.mark.gpu
def test_qlora_run_trains_only_the_adapters_of_a_4bit_base(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    trainer = Trainer(
        load_recipe(
            "recipes/lora.yaml", [*SMALL, "model.lora.load_in_4bit=true", "trainer.steps=1", f"output_dir={tmp_path}"]
        )
    )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules()) == 4 * 7  # every linear of 4 layers
    start = {k: v.detach().clone() for k, v in policy.named_parameters()}
    trainer.train()
    for name, p in policy.named_parameters():
        assert p.device.type == "cuda", name
        if ".lora_B." in name:
            assert not torch.equal(p, start[name]), f"adapter {name} did not train"
        elif not is_adapter(name):
            assert torch.equal(p, start[name]), f"base weight {name} changed"
    assert (tmp_path / "checkpoints" / "step-000001" / "model" / "adapter_model.safetensors").is_file()
