"""What the held-out evaluation reports: the recipe's metric on greedy completions, or mean@k and pass@k on k
sampled ones (docs/evaluation.md). The generation and its sharding over ranks are
:meth:`rlkit.trainer.Trainer.evaluate`'s; this module turns scores into the record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from rewards.scoring import Scores
from rlkit.recipe.schema import TOTAL


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from ``n`` samples of which ``c`` pass (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1): 1 - C(n - c, k) / C(n, k), the probability that k of
    the n samples drawn without replacement hold at least one pass. With n = k it is 1 if c > 0, else 0."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def metric_scores(scores: Scores, metric: str) -> list[float | None]:
    """Each completion's score under ``metric`` (``total``, or a reward's label); None where it abstains."""
    if metric == TOTAL:
        return [None if math.isnan(t) else t for t in scores.total]
    return scores.per_verifier[metric]


@dataclass
class EvalResult:
    """The held-out record of one evaluation, as summary.json's ``eval_start`` / ``eval_end`` carry it."""

    metric: str  # eval.metric: "total" or a reward's label
    k: int  # completions per prompt: 1 greedy, or k sampled
    score: float  # mean of the metric over the scored completions (mean@k when k > 1)
    reward: float  # mean total reward over the same completions
    pass_at_k: float | None  # fraction of prompts with a passing completion (k > 1), else None
    tool_use: float | None = None  # multi-turn: fraction of the completions (episodes) that called a tool
    tool_use_of_passing: float | None = None  # multi-turn: that fraction among the passing ones

    def metrics(self) -> dict[str, float]:
        """The metrics.jsonl keys: ``eval/score``, ``eval/reward``, ``eval/pass@k`` (k > 1), and
        ``eval/tool_use``, ``eval/tool_use_of_passing`` (multi-turn)."""
        out = {"eval/score": self.score, "eval/reward": self.reward}
        if self.pass_at_k is not None:
            out[f"eval/pass@{self.k}"] = self.pass_at_k
        if self.tool_use is not None and self.tool_use_of_passing is not None:
            out |= {"eval/tool_use": self.tool_use, "eval/tool_use_of_passing": self.tool_use_of_passing}
        return out

    def describe(self) -> str:
        """``exact_number 0.415`` (greedy), ``exact_number mean@4 0.390, pass@4 0.620`` (sampled)."""
        if self.pass_at_k is None:
            return f"{self.metric} {self.score:.3f}"
        return f"{self.metric} mean@{self.k} {self.score:.3f}, pass@{self.k} {self.pass_at_k:.3f}"

    def record(self) -> dict:
        return asdict(self)


class EvalTally:
    """Host sums over one rank's held-out completions, prompt-major with ``k`` rows per prompt.

    Sums, in float32 as the verifiers' Python floats add up chunk by chunk: the metric's scores and their
    count, the total rewards and their count, the prompts' pass@k and their count. A completion passes
    when its metric score is at least ``threshold``; a prompt's pass@k is :func:`pass_at_k` over the n
    completions its metric scored (n = k unless some abstained), so with all k scored it is 1 when any of
    them passes. A prompt whose completions all abstain counts in no mean. Multi-turn episodes also sum
    the completions that called a tool, and the passing ones that did, over the passing ones.
    """

    def __init__(self, metric: str, k: int, threshold: float, episodes: bool = False):
        self.metric, self.k, self.threshold, self.episodes = metric, k, threshold, episodes
        self.sums = torch.zeros(10)

    def add(self, scores: Scores, used_tool: list[bool] | None = None) -> None:
        """Add one chunk: ``scores`` of its completions and, for episodes, whether each called a tool."""
        per_row = metric_scores(scores, self.metric)
        scored = [s for s in per_row if s is not None]
        valid = [t for t in scores.total if not math.isnan(t)]
        groups = [[s for s in per_row[i : i + self.k] if s is not None] for i in range(0, len(per_row), self.k)]
        passes = [pass_at_k(len(g), sum(s >= self.threshold for s in g), len(g)) for g in groups if g]
        used = used_tool or [False] * len(per_row)
        passing = [u for s, u in zip(per_row, used) if s is not None and s >= self.threshold]
        counts = [sum(scored), len(scored), sum(valid), len(valid), sum(passes), len(passes)]
        self.sums += torch.tensor([*counts, sum(used), len(used), sum(passing), len(passing)], dtype=torch.float32)

    def result(self, sums: torch.Tensor) -> EvalResult:
        """The record from ``sums``, this tally's sums reduced over ranks."""
        mean = [float(sums[i] / sums[i + 1].clamp(min=1)) for i in (0, 2, 4, 6, 8)]
        tool_use, of_passing = (mean[3], mean[4]) if self.episodes else (None, None)
        return EvalResult(self.metric, self.k, mean[0], mean[1], mean[2] if self.k > 1 else None, tool_use, of_passing)
