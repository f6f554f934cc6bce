"""Metric accumulation that stays exact across micro-batches and ranks.

A mean is kept as (sum, count) and divided only after summing over every micro-batch and rank, so a
clip fraction logged from 4 micro-batches on 2 ranks equals the one computed on the whole batch at once.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


class Metrics:
    """Named scalar metrics: masked means, minima and maxima. Keys are namespaced (``objective/clip_frac``).

    Values stay tensors (on their device) until :meth:`state`, so recording a metric in the training
    loop never waits for the device.
    """

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor | float] = defaultdict(float)
        self._count: dict[str, torch.Tensor | float] = defaultdict(float)
        self._max: dict[str, torch.Tensor] = {}
        self._min: dict[str, torch.Tensor] = {}

    def mean(self, name: str, values, mask: torch.Tensor | None = None) -> None:
        """Add ``values`` (a tensor, optionally masked, or a float counted once) to the mean of ``name``."""
        if not torch.is_tensor(values):
            self._sum[name] += float(values)
            self._count[name] += 1.0
            return
        values = values.detach().float()
        if mask is None:
            self._sum[name] = self._sum[name] + values.sum()
            self._count[name] += values.numel()
        else:
            mask = mask.detach().float()
            self._sum[name] = self._sum[name] + (values * mask).sum()
            self._count[name] = self._count[name] + mask.sum()

    def max(self, name: str, values, mask: torch.Tensor | None = None) -> None:
        """Running maximum of ``values`` (masked); a name whose values were never selected is not reported."""
        v = _masked(values, mask, -math.inf).amax() if _size(values) else values.new_full((), -math.inf)
        self._max[name] = torch.maximum(self._max[name], v) if name in self._max else v

    def min(self, name: str, values, mask: torch.Tensor | None = None) -> None:
        v = _masked(values, mask, math.inf).amin() if _size(values) else values.new_full((), math.inf)
        self._min[name] = torch.minimum(self._min[name], v) if name in self._min else v

    def state(self) -> dict:
        """Plain floats (one device sync), ready to be gathered from every rank."""
        floats = lambda d: {k: float(v) for k, v in d.items()}  # noqa: E731
        finite = lambda d: {k: v for k, v in floats(d).items() if math.isfinite(v)}  # noqa: E731
        return {
            "sum": floats(self._sum),
            "count": floats(self._count),
            "max": finite(self._max),
            "min": finite(self._min),
        }

    @staticmethod
    def combine(states: list[dict]) -> dict[str, float]:
        """Final values from the states of several ranks (or several accumulators)."""
        sums: defaultdict[str, float] = defaultdict(float)
        counts: defaultdict[str, float] = defaultdict(float)
        out: dict[str, float] = {}
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


def _size(values) -> int:
    return values.numel() if torch.is_tensor(values) else 1


def _masked(values, mask: torch.Tensor | None, fill: float) -> torch.Tensor:
    values = values.detach().float() if torch.is_tensor(values) else torch.tensor([float(values)])
    return values if mask is None else torch.where(mask.detach().bool(), values, fill)
