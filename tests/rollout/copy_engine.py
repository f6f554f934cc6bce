"""A user engine (chosen by import path) that samples from its own copy of the policy, as vLLM does, and
can be told to sync badly: ``drop`` leaves named weights out of every sync (a stale tied output layer is
``[model.embed_tokens.weight, lm_head.weight]``), ``skip_syncs`` copies nothing after the first."""

import contextlib
import copy

import torch

from rlkit.rollout import EngineOptions
from rlkit.rollout.hf import HFEngine


class CopyEngineOptions(EngineOptions):
    drop: list[str] = []
    skip_syncs: bool = False


class CopyEngine(HFEngine):
    Options = CopyEngineOptions
    shares_trainer_weights = False

    def __init__(self, options, setup):
        self.copy: torch.nn.Module | None = None
        super().__init__(
            options, setup.__class__(**{**setup.__dict__, "live_policy": lambda: contextlib.nullcontext(self.copy)})
        )

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        if self.copy is None:
            self.copy = copy.deepcopy(model).eval()
        elif not self.options.skip_syncs:
            state = {k: v for k, v in model.state_dict().items() if k not in self.options.drop}
            self.copy.load_state_dict(state, strict=False)
        self.version = version
