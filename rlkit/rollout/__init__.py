"""Rollouts: the engine boundary (:mod:`rlkit.rollout.engine`), the engines, and the batch they fill."""

from rlkit.rollout.batch import RolloutBatch, sample
from rlkit.rollout.engine import (
    ENGINES,
    Completions,
    Engine,
    EngineOptions,
    EngineSetup,
    Sampling,
    Tokenizer,
    build_engine,
    engine_class,
    engine_options,
)
from rlkit.rollout.episodes import EpisodeRecord, episode_ids, episode_metrics, reply_ids, run_episodes
from rlkit.rollout.hf import HFEngine
from rlkit.rollout.sync import EngineOutOfSync, check_sync, default_tolerance

__all__ = [
    "ENGINES",
    "Completions",
    "Engine",
    "EngineOptions",
    "EngineOutOfSync",
    "EngineSetup",
    "EpisodeRecord",
    "HFEngine",
    "RolloutBatch",
    "Sampling",
    "Tokenizer",
    "build_engine",
    "check_sync",
    "default_tolerance",
    "engine_class",
    "engine_options",
    "episode_ids",
    "episode_metrics",
    "reply_ids",
    "run_episodes",
    "sample",
]
