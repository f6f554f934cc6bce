"""Rollout workers: generate completions for prompts and return a :class:`RolloutBatch`."""

from rlkit.rollout.batch import RolloutBatch
from rlkit.rollout.hf import HFGenerateWorker

WORKERS = {"hf": HFGenerateWorker}

__all__ = ["WORKERS", "HFGenerateWorker", "RolloutBatch"]
