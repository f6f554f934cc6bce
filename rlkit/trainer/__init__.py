"""The RL training loop on accelerate (:mod:`.loop`), checkpoints and run records."""

from rlkit.trainer.loop import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged"]
