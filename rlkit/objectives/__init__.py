"""Objectives as composable parts; see :mod:`rlkit.objectives.registry` for the part kinds."""

from rlkit import advantages  # noqa: F401  (registers the advantage estimators)
from rlkit.objectives import aggregation, kl, surrogates  # noqa: F401  (register their parts)
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.objective import Objective
from rlkit.objectives.presets import PRESETS, build_objective, resolve_spec
from rlkit.objectives.registry import KINDS, PARTS, Part, build_part, register_part

__all__ = ["KINDS", "PARTS", "PRESETS", "Objective", "Part", "StepBatch", "build_objective", "build_part",
           "register_part", "resolve_spec"]
