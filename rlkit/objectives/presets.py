"""Named presets and assembling an objective from its recipe form.

A preset is a few lines of part specs. A recipe picks one and overrides any part::

    objective:
      preset: grpo
      surrogate: {eps_high: 0.28}        # same type as the preset's: options are merged
      aggregation: {type: token_mean}    # another type: the part is replaced
"""

from __future__ import annotations

from typing import Any

from rlkit.objectives.objective import Objective
from rlkit.objectives.registry import build_part

PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {
        "description": "GRPO (DeepSeekMath 2402.03300): z-score advantages, PPO-clip 0.2, k3 KL beta 0.04, "
                       "seq-mean-token-mean",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
        "aggregation": {"type": "seq_mean_token_mean"},
        "kl": {"type": "kl", "beta": 0.04, "estimator": "k3"},
    },
}

SLOTS = ("advantage", "surrogate", "aggregation", "kl")
LIST_SLOTS = ("selection", "weighting")


def merge_part(base: dict | None, override: dict | None) -> dict | None:
    """Override a preset's part: same (or no) type merges options, another type replaces the part."""
    if override is None:
        return base
    if base is None or override.get("type", base.get("type")) != base.get("type"):
        return dict(override)
    return {**base, **override}


def resolve_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The full part specs of an objective config: its preset with the config's overrides applied."""
    config = dict(config)
    preset_name = config.pop("preset", "grpo")
    if preset_name not in PRESETS:
        raise KeyError(f"unknown objective preset {preset_name!r}; presets: {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    spec: dict[str, Any] = {"name": preset_name}
    for slot in SLOTS:
        spec[slot] = merge_part(preset.get(slot), config.pop(slot, None))
    for slot in LIST_SLOTS:
        spec[slot] = list(config.pop(slot, preset.get(slot, [])))
    spec["entropy_bonus"] = config.pop("entropy_bonus", preset.get("entropy_bonus", 0.0))
    if config:
        raise KeyError(f"unknown objective keys {sorted(config)}; allowed: preset, {', '.join(SLOTS + LIST_SLOTS)}, "
                       "entropy_bonus")
    return spec


def build_objective(config: dict[str, Any]) -> Objective:
    """Assemble an :class:`Objective` from ``{preset: NAME, <slot>: {...}, ...}``."""
    spec = resolve_spec(config)
    return Objective(
        advantage=build_part("advantage", spec["advantage"]),
        surrogate=build_part("surrogate", spec["surrogate"]),
        aggregation=build_part("aggregation", spec["aggregation"]),
        kl=build_part("kl", spec["kl"] or {"type": "kl", "beta": 0.0}),
        selection=tuple(build_part("selection", s) for s in spec["selection"]),
        weighting=tuple(build_part("weighting", s) for s in spec["weighting"]),
        entropy_bonus=float(spec["entropy_bonus"]),
        name=spec["name"],
    )
