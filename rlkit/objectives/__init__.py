"""Objectives as composable parts; see :mod:`rlkit.objectives.registry` for the part kinds."""

from rlkit import advantages  # noqa: F401  (registers the advantage estimators)
from rlkit.objectives import aggregation, kl, selection, surrogates, weighting  # noqa: F401  (register parts)
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.objective import Objective
from rlkit.objectives.presets import PRESETS, build_objective, describe, resolve_spec
from rlkit.objectives.registry import KINDS, PARTS, Part, build_part, register_part
from rlkit.objectives.selection import keep_groups

__all__ = ["KINDS", "PARTS", "PRESETS", "Objective", "Part", "StepBatch", "build_objective", "build_part",
           "describe", "keep_groups", "register_part", "resolve_spec"]
