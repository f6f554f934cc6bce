"""Named presets and assembling an objective from its recipe form.

A preset is a few lines of part specs. A recipe picks one and overrides any part::

    objective:
      preset: grpo
      surrogate: {eps_high: 0.28}        # same type as the preset's: options are merged
      aggregation: {type: token_mean}    # another type: the part is replaced
"""

from __future__ import annotations

from typing import Any, TypeVar

from rlkit.objectives.advantages import AdvantageEstimator
from rlkit.objectives.aggregation import Aggregation
from rlkit.objectives.kl import Regulariser
from rlkit.objectives.objective import Objective
from rlkit.objectives.registry import KINDS, PARTS, Part, build_part
from rlkit.objectives.selection import Selection
from rlkit.objectives.surrogates import Surrogate
from rlkit.objectives.weighting import Weighting

NO_KL = {"type": "kl", "beta": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {
        "description": "GRPO (DeepSeekMath 2402.03300): z-score advantages, PPO-clip 0.2, k3 KL beta 0.04, "
        "seq-mean-token-mean",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
        "aggregation": {"type": "seq_mean_token_mean"},
        "kl": {"type": "kl", "beta": 0.04, "estimator": "k3"},
    },
    "dr_grpo": {
        "description": "Dr. GRPO (2503.20783): mean-centred advantages (no std), token sums over a constant "
        "(set aggregation.norm to max_new_tokens), no KL",
        "advantage": {"type": "group_mean"},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
        "aggregation": {"type": "seq_mean_token_sum_norm"},
        "kl": NO_KL,
    },
    # DAPO's soft overlong punishment is a reward: add the rewards helper's overlong verifier to the
    # recipe (L_max, L_cache); truncated completions can also be dropped with {type: mask_truncated}.
    "dapo": {
        "description": "DAPO (2503.14476): clip-higher 0.2/0.28, token-mean, dynamic sampling (refill), no KL; "
        "add the soft-overlong reward in rewards:",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28},
        "aggregation": {"type": "token_mean"},
        "selection": [{"type": "dynamic_sampling", "mode": "refill", "max_rounds": 10}],
        "kl": NO_KL,
    },
    "gspo": {
        "description": "GSPO (2507.18071): sequence-level ratio clipped at 3e-4/4e-4, seq-mean-token-mean, no KL",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "gspo", "eps_low": 3e-4, "eps_high": 4e-4},
        "aggregation": {"type": "seq_mean_token_mean"},
        "kl": NO_KL,
    },
    # token-mean as the official code and config (the summarised paper shows seq-mean-token-mean:
    # docs/objectives.md §9.2)
    "ctpo": {
        "description": "CTPO (2605.07331): cumulative token ratio, log-space window 0.025/0.05 * sqrt(t), "
        "dual clip, token-mean, no KL",
        "advantage": {"type": "group_zscore"},
        "surrogate": {
            "type": "ctpo",
            "mode": "cumprod",
            "eps_low": 0.025,
            "eps_high": 0.05,
            "eps_c": 0.05,
            "power": 0.5,
        },
        "aggregation": {"type": "token_mean"},
        "kl": NO_KL,
    },
    # GRPO with only the aggregation changed (BA has no hyperparameter); no KL, whose BA aggregation
    # the paper leaves open (docs/objectives.md §9.1)
    "ba": {
        "description": "Balanced Aggregation (2605.04077): GRPO with sign-balanced token means per group, no KL",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
        "aggregation": {"type": "balanced"},
        "kl": NO_KL,
    },
    "d3s": {
        "description": "D3S (2509.22115): max-variance samples across the batch, then top-K tokens by |A|*H, "
        "both on a schedule; token-mean, no KL",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
        "aggregation": {"type": "token_mean"},
        "selection": [
            {"type": "d3s_sample", "keep_init": 0.25, "keep_final": 0.75, "cross_group": True},
            {"type": "d3s_token", "k_init": 0.2, "k_final": 0.6},
        ],
        "kl": NO_KL,
    },
    "tw_grpo": {
        "description": "TW-GRPO (2505.24718): token weights from intra-group divergence (alpha 1.7), "
        "clip 0.2/0.28, token-mean, std eps 1e-4, no KL",
        "advantage": {"type": "group_zscore", "eps": 1e-4},
        "surrogate": {"type": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28},
        "aggregation": {"type": "token_mean"},
        "weighting": [{"type": "tw_grpo", "alpha": 1.7}],
        "kl": NO_KL,
    },
    # On-policy distillation: the loss is the teacher divergence alone (the task advantage is computed
    # for metrics and for an optional mix into opd_sampled); docs/objectives.md §5
    "opd": {
        "description": "On-policy distillation: full-vocabulary reverse KL to the teacher on every student "
        "token, token-mean (needs teacher:)",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "distill", "beta": 1.0},
        "aggregation": {"type": "token_mean"},
        "kl": NO_KL,
    },
    "opd_tip": {
        "description": "OPD with TIP (2604.14084): each rollout keeps its top 50% of tokens by the Soft-OR "
        "of student entropy and reverse KL, token-mean (needs teacher:)",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "distill", "beta": 1.0},
        "aggregation": {"type": "token_mean"},
        "selection": [{"type": "tip", "rule": "soft_or", "rho": 0.5}],
        "kl": NO_KL,
    },
    "opd_q3": {
        "description": "OPD with TIP's Q3 rule (2604.14084): top 20% per rollout by forward KL x (1 - entropy), "
        "reverse-KL loss, token-mean (needs teacher:)",
        "advantage": {"type": "group_zscore"},
        "surrogate": {"type": "distill", "beta": 1.0},
        "aggregation": {"type": "token_mean"},
        "selection": [{"type": "tip", "rule": "q3", "rho": 0.2}],
        "kl": NO_KL,
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
        raise KeyError(
            f"unknown objective keys {sorted(config)}; allowed: preset, {', '.join(SLOTS + LIST_SLOTS)}, entropy_bonus"
        )
    return spec


KindBase = TypeVar("KindBase", bound=Part)


def build_slot(kind: str, spec: dict, base: type[KindBase]) -> KindBase:
    """:func:`build_part` for a slot whose parts are ``base``s: a user's ``module:Class`` of another kind is
    refused here, not mid-run."""
    part = build_part(kind, spec)
    if not isinstance(part, base):
        raise TypeError(f"{kind} part {spec.get('type')!r} is not an rlkit {base.__name__}")
    return part


def build_objective(config: dict[str, Any]) -> Objective:
    """Assemble an :class:`Objective` from ``{preset: NAME, <slot>: {...}, ...}``."""
    spec = resolve_spec(config)
    return Objective(
        advantage=build_slot("advantage", spec["advantage"], AdvantageEstimator),
        surrogate=build_slot("surrogate", spec["surrogate"], Surrogate),
        aggregation=build_slot("aggregation", spec["aggregation"], Aggregation),
        kl=build_slot("kl", spec["kl"] or NO_KL, Regulariser),
        selection=tuple(build_slot("selection", s, Selection) for s in spec["selection"]),
        weighting=tuple(build_slot("weighting", s, Weighting) for s in spec["weighting"]),
        entropy_bonus=float(spec["entropy_bonus"]),
        name=spec["name"],
    )


def describe() -> str:
    """Text for ``rlkit objectives``: every part kind, its parts with options and defaults, the presets."""
    lines = ["Objective parts (recipe: objective.<kind>: {type: NAME, option: value})", ""]
    for kind in KINDS:
        lines.append(f"{kind}:")
        for name, cls in sorted(PARTS[kind].items()):
            options = ", ".join(f"{k}={f.default!r}" for k, f in cls.model_fields.items())
            lines.append(f"  {name:<24} {cls.description()}")
            if options:
                lines.append(f"  {'':<24} options: {options}")
        lines.append("")
    lines += [
        "entropy_bonus: a float; the loss subtracts it times the policy entropy per token",
        "",
        "Presets (recipe: objective.preset: NAME; any part can be overridden)",
    ]
    lines += [f"  {name:<10} {preset['description']}" for name, preset in PRESETS.items()]
    return "\n".join(lines)
