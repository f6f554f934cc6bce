"""Registry of objective parts.

An objective is assembled from *parts*, one registry per kind:

=============  =========================================================================
kind           what a part of that kind does
=============  =========================================================================
advantage      rewards [B] + group ids [B] -> advantages [B]
surrogate      per-token policy loss [B,T] from log-probs (PPO-clip, GSPO, CTPO, ...)
aggregation    per-token weights W [B,T] whose sum-product with the loss is the step's loss
selection      drops samples or tokens (a 0/1 mask) before aggregation (D3S, top-entropy, ...)
weighting      multiplies W after aggregation (TW-GRPO's token weights)
kl             regulariser towards the frozen reference model
=============  =========================================================================

A part is a small pydantic model: its fields are its recipe options (validated, documented), its
methods do the arithmetic. In a recipe a part is ``{type: NAME, option: value, ...}``; ``type`` may also
be an import path ``package.module:Class`` for a user's own part.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

KINDS = ("advantage", "surrogate", "aggregation", "selection", "weighting", "kl")
TEACHER_NEEDS = frozenset({"logp_teacher", "teacher_logits", "student_logits"})  # needs that run the teacher


@dataclass(frozen=True)
class RolloutFilter:
    """Rollout-stage filtering a part asks of the trainer (DAPO's dynamic-sampling refill).

    ``keep(rewards [B], group_ids [B]) -> [n_groups] bool`` says which groups of a freshly scored rollout
    batch to keep; the trainer replaces the others with groups of fresh prompts, round after round, until
    every rank holds its number of groups or ``max_rounds`` rounds ran (<= 0: no limit).
    """

    keep: Callable[[Any, Any], Any]
    max_rounds: int


class Part(BaseModel):
    """Base of every objective part. Subclasses declare what the trainer must compute for them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: inputs this part reads from the StepBatch besides mask/advantages/group ids: any of "logp_old",
    #: "logp_ref", "entropy" (policy entropy at rollout time), "logits" (the trainer must run its no-grad
    #: scoring pass, even on-policy, and call :meth:`on_logits`), "logp_teacher" (the teacher's log-probs
    #: of the sampled tokens), "teacher_logits" (the scoring pass also runs the teacher and passes its
    #: logits to :meth:`on_logits`), "student_logits" (each training micro-batch's forward hands the
    #: policy's logits, with gradient, and the teacher's logits on the same rows, without, to the loss).
    needs: ClassVar[frozenset[str]] = frozenset()
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def on_logits(self, logits, completion_ids, mask, group_ids=None, teacher_logits=None) -> dict[str, Any]:
        """Per-token statistics taken from the no-grad scoring pass (whole groups at a time).

        ``logits``: [b,T,V] of the policy at rollout time, ``logits[:, t]`` scoring ``completion_ids[:, t]``
        [b,T]; ``mask``: [b,T]; ``group_ids``: [b] (any labels; every group of the chunk is whole);
        ``teacher_logits``: [b,T,V] of the teacher on the same tokens (parts that need "teacher_logits").
        Returns name -> [b,T] tensors, which the trainer concatenates into ``StepBatch.extras``.
        Only parts that declare the need "logits" are called.
        """
        return {}

    def rollout_filter(self) -> RolloutFilter | None:
        """The rollout-stage filter this part needs from the trainer, if any (see :class:`RolloutFilter`)."""
        return None


PARTS: dict[str, dict[str, type[Part]]] = {kind: {} for kind in KINDS}


def register_part(kind: str, name: str):
    """Class decorator: make a part available to recipes as ``{type: name}`` under ``kind``."""
    if kind not in PARTS:
        raise ValueError(f"unknown part kind {kind!r}; kinds: {KINDS}")

    def decorate(cls: type[Part]) -> type[Part]:
        if name in PARTS[kind]:
            raise ValueError(f"{kind} part {name!r} is already registered")
        cls.kind, cls.name = kind, name
        PARTS[kind][name] = cls
        return cls

    return decorate


def part_class(kind: str, type_name: str) -> type[Part]:
    """The class for ``type_name``: a registered name of ``kind`` or an import path ``module:Class``."""
    if type_name in PARTS[kind]:
        return PARTS[kind][type_name]
    if ":" in type_name:
        module, attr = type_name.rsplit(":", 1)
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Part)):
            raise TypeError(f"{type_name} is not an rlkit objective Part")
        return cls
    raise KeyError(f"unknown {kind} part {type_name!r}; registered: {sorted(PARTS[kind])}")


def build_part(kind: str, spec: dict) -> Part:
    """Instantiate a part from its recipe form ``{type: name, **options}``."""
    spec = dict(spec)
    type_name = spec.pop("type", None)
    if type_name is None:
        raise KeyError(f"{kind} part needs a 'type' (one of {sorted(PARTS[kind])})")
    return part_class(kind, type_name)(**spec)
