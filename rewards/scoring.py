"""Scoring a batch of completions with the weighted verifiers of a recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from rewards.registry import get_verifier


class RewardSpec(BaseModel):
    """One entry of a recipe's ``rewards:`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verifier: str = Field(description="registered name, 'module:function' or 'file.py:function'")
    weight: float = Field(1.0, description="weight of this verifier in the total reward")
    name: str | None = Field(None, description="label in metrics (default: the verifier)")
    kwargs: dict = Field(default_factory=dict, description="extra keyword arguments for the verifier")

    @property
    def label(self) -> str:
        return self.name or self.verifier


@dataclass
class Scores:
    total: list[float]                          # [B] weighted sum over non-abstaining verifiers; NaN if all abstain
    per_verifier: dict[str, list[float | None]]  # label -> [B]
    metrics: dict[str, float]                   # reward/<label>/mean, ...


class RewardScorer:
    """Calls each verifier on the whole batch and combines them: total = sum_k w_k * r_k (None skipped)."""

    def __init__(self, specs: list[RewardSpec]):
        self.specs = specs
        self.functions = [get_verifier(s.verifier) for s in specs]

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> Scores:
        per_verifier = {}
        for spec, fn in zip(self.specs, self.functions):
            scores = list(fn(prompts, completions, **columns, **spec.kwargs))
            if len(scores) != len(completions):
                raise ValueError(f"verifier {spec.label!r} returned {len(scores)} scores for {len(completions)} "
                                 "completions")
            per_verifier[spec.label] = scores
        total, metrics = [], {}
        for i in range(len(completions)):
            terms = [s.weight * per_verifier[s.label][i] for s in self.specs if per_verifier[s.label][i] is not None]
            total.append(sum(terms) if terms else math.nan)
        for label, scores in per_verifier.items():
            given = [s for s in scores if s is not None]
            metrics[f"reward/{label}/mean"] = sum(given) / len(given) if given else math.nan
        return Scores(total=total, per_verifier=per_verifier, metrics=metrics)
