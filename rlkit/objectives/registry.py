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

import enum
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

KINDS = ("advantage", "surrogate", "aggregation", "selection", "weighting", "kl")


class Need(str, enum.Enum):
    """What a part asks the trainer to compute for it (:attr:`Part.needs`); the trainer computes exactly
    the union over the objective's parts and nothing else. A ``str`` enum: a user's part may declare its
    needs as the strings (``"logp_ref"``), which are checked when its class is defined."""

    #: ``StepBatch.logp_old``: the proximal policy's log-probs, when several optimizer steps share a
    #: rollout batch (the sampler's, or recomputed: ``rollout.logp_old``); None on one update per batch
    LOGP_OLD = "logp_old"
    #: ``StepBatch.logp_ref``: the frozen reference model's log-probs (the reference is loaded only then)
    LOGP_REF = "logp_ref"
    #: ``StepBatch.logp_trainer``: the trainer's own log-probs of the sampled tokens under the policy at
    #: rollout time, from its no-grad scoring pass (which then runs even on-policy)
    LOGP_TRAINER = "logp_trainer"
    #: ``StepBatch.entropy``: the policy's entropy at rollout time, from the scoring pass
    ENTROPY = "entropy"
    #: the scoring pass projects every position to the vocabulary and calls :meth:`Part.on_logits`
    #: with the policy's logits [b,T,V]
    LOGITS = "logits"
    #: ``StepBatch.logp_teacher``: the teacher's log-probs of the sampled tokens (the scoring pass runs it)
    LOGP_TEACHER = "logp_teacher"
    #: the scoring pass also hands the teacher's logits [b,T,V] to :meth:`Part.on_logits`
    TEACHER_LOGITS = "teacher_logits"
    #: each training micro-batch's forward hands the policy's logits (with gradient) and the teacher's
    #: (without) at the active tokens to the surrogate (:class:`rlkit.objectives.surrogates.SurrogateInputs`)
    STUDENT_LOGITS = "student_logits"

    def __str__(self) -> str:
        return self.value


TEACHER_NEEDS = frozenset({Need.LOGP_TEACHER, Need.TEACHER_LOGITS, Need.STUDENT_LOGITS})  # needs that run the teacher


def as_needs(declared: Iterable[str], owner: str) -> frozenset[Need]:
    """``declared`` (members or their strings) as members; an unknown one is an error naming ``owner``."""
    known = [need.value for need in Need]
    unknown = sorted(str(need) for need in declared if need not in known)
    if unknown:
        raise ValueError(f"{owner}.needs: unknown need {unknown[0]!r}; the trainer provides {', '.join(known)}")
    return frozenset(Need(need) for need in declared)


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

    #: what the trainer must compute for this part besides mask/advantages/group ids (see :class:`Need`)
    needs: ClassVar[frozenset[Need]] = frozenset()
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Every part class's needs become :class:`Need` members when the class is defined (so when a
        recipe's ``module:Class`` is imported): a misspelt string stops the build, naming the class."""
        super().__pydantic_init_subclass__(**kwargs)
        cls.needs = as_needs(cls.needs, f"{cls.__module__}.{cls.__qualname__}")

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def on_logits(self, logits, completion_ids, mask, group_ids=None, teacher_logits=None) -> dict[str, Any]:
        """Per-token statistics taken from the no-grad scoring pass (whole groups at a time).

        ``logits``: [b,T,V] of the policy at rollout time, ``logits[:, t]`` scoring ``completion_ids[:, t]``
        [b,T]; ``mask``: [b,T]; ``group_ids``: [b] (any labels; every group of the chunk is whole);
        ``teacher_logits``: [b,T,V] of the teacher on the same tokens (parts that need
        :attr:`Need.TEACHER_LOGITS`). Returns name -> [b,T] tensors, which the trainer concatenates into
        ``StepBatch.extras``. Only parts that declare :attr:`Need.LOGITS` are called.
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
