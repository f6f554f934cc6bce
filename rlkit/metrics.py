"""Metric accumulation that stays exact across micro-batches and ranks.

A mean is kept as (sum, count) and divided only after summing over every micro-batch and rank, so a
clip fraction logged from 4 micro-batches on 2 ranks equals the one computed on the whole batch at once.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


class Metrics:
    """Named scalar metrics: masked means, minima and maxima. Keys are namespaced (``objective/clip_frac``)."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, float] = defaultdict(float)
        self._max: dict[str, float] = {}
        self._min: dict[str, float] = {}

    def mean(self, name: str, values, mask: torch.Tensor | None = None) -> None:
        """Add ``values`` (a tensor, optionally masked, or a float counted once) to the mean of ``name``."""
        if not torch.is_tensor(values):
            self._sum[name] += float(values)
            self._count[name] += 1.0
            return
        values = values.detach().float()
        if mask is None:
            self._sum[name] += float(values.sum())
            self._count[name] += values.numel()
        else:
            mask = mask.detach().float()
            self._sum[name] += float((values * mask).sum())
            self._count[name] += float(mask.sum())

    def max(self, name: str, values, mask: torch.Tensor | None = None) -> None:
        """Running maximum of ``values`` (masked); nothing is recorded when no value is selected."""
        v = _masked_values(values, mask)
        if v.numel():
            self._max[name] = max(self._max.get(name, -math.inf), float(v.max()))

    def min(self, name: str, values, mask: torch.Tensor | None = None) -> None:
        v = _masked_values(values, mask)
        if v.numel():
            self._min[name] = min(self._min.get(name, math.inf), float(v.min()))

    def state(self) -> dict:
        return {"sum": dict(self._sum), "count": dict(self._count), "max": self._max, "min": self._min}

    @staticmethod
    def combine(states: list[dict]) -> dict[str, float]:
        """Final values from the states of several ranks (or several accumulators)."""
        sums, counts, out = defaultdict(float), defaultdict(float), {}
        for s in states:
            for k, v in s["sum"].items():
                sums[k] += v
                counts[k] += s["count"][k]
        for k in sums:
            out[k] = sums[k] / counts[k] if counts[k] else math.nan
        for key, pick in (("max", max), ("min", min)):
            for s in states:
                for k, v in s[key].items():
                    out[k] = pick(out.get(k, v), v)
        return out

    def result(self) -> dict[str, float]:
        """Values over everything this process added (no other ranks)."""
        return self.combine([self.state()])


def _masked_values(values, mask: torch.Tensor | None) -> torch.Tensor:
    values = values.detach().float() if torch.is_tensor(values) else torch.tensor([float(values)])
    return values if mask is None else values[mask.detach().bool()]
