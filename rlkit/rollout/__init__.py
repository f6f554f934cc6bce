"""Rollout workers: generate completions for prompts and return a :class:`RolloutBatch`."""

from typing import Protocol

from rlkit.rollout.batch import RolloutBatch
from rlkit.rollout.hf import HFGenerateWorker


class RolloutWorker(Protocol):
    """What the trainer needs from a generation engine (built with tokenizer, eos_token_ids, max_new_tokens,
    temperature, top_p, max_prompt_tokens). ``model`` is the unwrapped policy; prompts are the dataset's
    (strings or chat messages), tokenized with :func:`rlkit.data.tokenize_prompts`. ``with_logp``: fill
    ``RolloutBatch.logp`` (the sampled tokens' log-probs at the sampling temperature, before top-p)."""

    def generate(self, model, prompts: list, columns: dict[str, list], samples_per_prompt: int,
                 greedy: bool = False, synced_gpus: bool = False, with_logp: bool = False) -> RolloutBatch: ...


WORKERS: dict[str, type[RolloutWorker]] = {"hf": HFGenerateWorker}

__all__ = ["WORKERS", "HFGenerateWorker", "RolloutBatch", "RolloutWorker"]
