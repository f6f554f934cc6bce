"""The RL training loop on accelerate (:mod:`.loop`), checkpoints and run records."""

from rlkit.trainer.checkpoint import CheckpointNotShared
from rlkit.trainer.loop import Trainer, TrainingDiverged

__all__ = ["CheckpointNotShared", "Trainer", "TrainingDiverged"]
