"""Scoring a batch of completions with the weighted verifiers of a recipe."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from rewards.calls import Task, call
from rewards.pool import VerifierPool
from rewards.registry import get_verifier

log = logging.getLogger(__name__)


class RewardSpec(BaseModel):
    """One entry of a recipe's ``rewards:`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verifier: str = Field(description="registered name, 'module:function' or 'file.py:function'")
    weight: float = Field(1.0, description="weight of this verifier in the total reward")
    name: str | None = Field(
        None,
        description="label in metrics (default: the verifier's name: a registered "
        "name, or the function of 'module:function' / 'file.py:function')",
    )
    kwargs: dict = Field(default_factory=dict, description="extra keyword arguments for the verifier")
    when: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="apply only to samples whose dataset column equals this value (or one of these values), "
        "e.g. {task: math} in a multi-task mix; other samples abstain (None) without a call",
    )
    timeout_s: float = Field(10.0, gt=0, description="time limit for scoring one sample; past it the sample fails")
    on_failure: float | None = Field(
        0.0,
        description="score recorded when the verifier raises or times out on a sample: a number, or null to abstain",
    )

    @property
    def label(self) -> str:
        # A file verifier's full path would end up in every metric key; its function name says which it is.
        return self.name or self.verifier.rsplit(":", 1)[-1]

    def applies(self, row: dict) -> bool:
        """Routing: whether this verifier scores the sample with dataset columns ``row``."""
        for column, wanted in self.when.items():
            if column not in row:
                raise ValueError(
                    f"reward {self.label!r} routes on column {column!r}, which the dataset lacks "
                    f"(columns: {sorted(row)})"
                )
            if str(row[column]) not in ([wanted] if isinstance(wanted, str) else wanted):
                return False
        return True


def with_labels(specs: list[RewardSpec]) -> list[RewardSpec]:
    """``specs`` with their labels written into ``name``; a default label that another entry also has (two
    files' ``score``, one verifier twice) is numbered by its entry's position: ``score_0``, ``score_1``.
    A ``name`` given twice is left as it is, for the caller to refuse."""
    labels = [s.label for s in specs]
    return [
        s if s.name else s.model_copy(update={"name": s.label if labels.count(s.label) == 1 else f"{s.label}_{i}"})
        for i, s in enumerate(specs)
    ]


@dataclass(frozen=True)
class Failure:
    """A verifier that raised or timed out on one sample: log it next to that sample."""

    label: str
    index: int  # position of the sample in the batch
    kind: str  # "error" or "timeout"
    message: str


@dataclass
class Scores:
    total: list[float]  # [B] sum_k w_k * r_k over non-abstaining verifiers; NaN if all abstain
    per_verifier: dict[str, list[float | None]]  # label -> [B]; failures hold the spec's on_failure value
    metrics: dict[str, float]  # reward/<label>/{mean, failures, timeouts}
    failures: list[Failure] = field(default_factory=list)  # one per failed (verifier, sample), to log with it


class RewardScorer:
    """Scores batches with weighted verifiers: total = sum_k w_k * r_k, abstentions (None) skipped.

    Each verifier is called once per sample (routed by ``RewardSpec.when``), in ``workers`` processes
    (:class:`rewards.pool.VerifierPool`), or in this process when ``workers == 0`` (tests, tiny batches;
    time limits then only work in the main thread). A verifier that raises or times out on a sample
    scores that sample ``on_failure``, is counted in the metrics, logged with the completion and listed
    in ``Scores.failures``; it never raises out of here. Create the scorer once per run and ``close()``
    it (or use ``with``).
    """

    def __init__(self, specs: list[RewardSpec], workers: int = 0):
        specs = with_labels(specs)
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"reward labels must be unique, got {labels}; set 'name' to tell them apart")
        self.specs = specs
        self.functions = [get_verifier(s.verifier) for s in specs]  # fail fast on a bad spec
        self.pool = VerifierPool([(s.verifier, s.kwargs) for s in specs], workers) if workers else None

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> Scores:
        rows = _rows(prompts, completions, columns)
        jobs = [(k, i) for k, spec in enumerate(self.specs) for i, row in enumerate(rows) if spec.applies(row)]
        tasks = [Task(k, prompts[i], completions[i], rows[i], self.specs[k].timeout_s) for k, i in jobs]
        if self.pool:
            outcomes = self.pool.map(tasks)
        else:
            outcomes = [call(self.functions[t.spec], self.specs[t.spec].kwargs, t) for t in tasks]
        per_verifier: dict[str, list[float | None]] = {s.label: [None] * len(rows) for s in self.specs}
        failures = []
        for (k, i), outcome in zip(jobs, outcomes):
            spec = self.specs[k]
            per_verifier[spec.label][i] = spec.on_failure if outcome.failure else outcome.score
            if outcome.failure:
                failures.append(Failure(spec.label, i, outcome.failure, outcome.message))
                log.warning(
                    "reward %s: %s on sample %d: %s; completion: %.300r",
                    spec.label,
                    outcome.failure,
                    i,
                    outcome.message,
                    completions[i],
                )
        return Scores(
            _totals(self.specs, per_verifier, len(rows)),
            per_verifier,
            _metrics(self.specs, per_verifier, failures),
            failures,
        )

    def close(self) -> None:
        if self.pool:
            self.pool.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rows(prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[dict]:
    """Per-sample dicts of the dataset columns, after checking every column has one value per sample."""
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"dataset column {name!r} has {len(values)} values for {n} completions")
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]


def _totals(specs: list[RewardSpec], per_verifier: dict[str, list], n: int) -> list[float]:
    totals = []
    for i in range(n):
        terms = [s.weight * per_verifier[s.label][i] for s in specs if per_verifier[s.label][i] is not None]
        totals.append(sum(terms) if terms else math.nan)
    return totals


def _metrics(specs: list[RewardSpec], per_verifier: dict[str, list], failures: list[Failure]) -> dict[str, float]:
    """Per verifier: mean of its non-abstaining scores (NaN if none), and counts of errors and timeouts."""
    metrics = {}
    for spec in specs:
        given = [s for s in per_verifier[spec.label] if s is not None]
        metrics[f"reward/{spec.label}/mean"] = sum(given) / len(given) if given else math.nan
        for kind, key in (("error", "failures"), ("timeout", "timeouts")):
            metrics[f"reward/{spec.label}/{key}"] = float(
                sum(f.label == spec.label and f.kind == kind for f in failures)
            )
    return metrics
