"""Objectives as composable parts; see :mod:`rlkit.objectives.registry` for the part kinds."""

# importing the part modules registers their parts
from rlkit.objectives import advantages, aggregation, distill, kl, selection, surrogates, weighting  # noqa: F401
from rlkit.objectives.batch import StepBatch
from rlkit.objectives.objective import Objective
from rlkit.objectives.presets import PRESETS, build_objective, describe, resolve_spec
from rlkit.objectives.registry import KINDS, PARTS, Need, Part, build_part, register_part
from rlkit.objectives.surrogates import SurrogateInputs

__all__ = [
    "KINDS",
    "PARTS",
    "PRESETS",
    "Need",
    "Objective",
    "Part",
    "StepBatch",
    "SurrogateInputs",
    "build_objective",
    "build_part",
    "describe",
    "register_part",
    "resolve_spec",
]
