"""The rollout engine boundary: what the trainer asks of whatever samples its completions.

::

    Trainer --sync_weights(model, version)--> Engine (hf in process | vllm colocated | vllm server | yours)
            <--Completions: token ids, behaviour log-probs, policy version--

The trainer tokenizes prompts and hands the engine token ids; the engine returns the sampled tokens exactly
as sampled, each with its log-probability under the distribution it was drawn from (softmax(logits / T),
before top-p), and the policy version of the weights it sampled with. Weights reach an engine only through
:meth:`Engine.sync_weights`, and the trainer checks every sync with :meth:`Engine.probe_logp`
(:func:`rlkit.rollout.sync.check_sync`): an engine that keeps stale weights is silent otherwise.

Engines are chosen in the recipe, ``rollout.engine: {type: hf | vllm | vllm_server | module:Class, ...}``;
the other keys are the engine's :class:`EngineOptions`, validated by ``rlkit check``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from transformers import BatchEncoding


@dataclass(frozen=True)
class Sampling:
    """What to sample for each prompt: ``n`` completions of at most ``max_new_tokens`` tokens from
    softmax(logits / temperature), nucleus-filtered at ``top_p``; or the argmax (``greedy``, evaluation).

    With a ``seed``, a prompt's completions are drawn from a random stream of its own, seeded from ``seed``
    (and the prompt's tokens, :func:`prompt_seed`, where the engine seeds prompts one by one), so they do
    not depend on the other prompts of the call, nor on how prompts are split into calls or over
    processes (held-out pass@k); without, from the engine's stream (rollouts)."""

    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    seed: int | None = None


def prompt_seed(seed: int, prompt_ids: list[int]) -> int:
    """The seed of one prompt's random stream, from ``seed`` and its token ids: 56 bits of blake2b (Python's
    ``hash`` differs between processes). Its ``n`` completions use this seed plus 0 .. n - 1, as vLLM
    seeds the samples of one request."""
    digest = hashlib.blake2b(repr((seed, list(prompt_ids))).encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


class Tokenizer(Protocol):
    """What rollouts use of the policy's tokenizer: a transformers tokenizer with a pad token
    (:func:`rlkit.models.load_tokenizer` sets one)."""

    @property
    def pad_token_id(self) -> int: ...

    @property
    def bos_token_id(self) -> int | None: ...

    def __call__(self, text: list[str] | str, add_special_tokens: bool = True) -> BatchEncoding: ...

    def apply_chat_template(self, conversation: list, **kwargs: Any) -> Any: ...

    def pad(
        self, encoded_inputs: dict[str, list[list[int]]], *, padding: bool, padding_side: str, return_tensors: str
    ) -> BatchEncoding: ...

    def batch_decode(self, sequences: torch.Tensor, *, skip_special_tokens: bool) -> list[str]: ...


@dataclass
class Completions:
    """What an engine returns for N prompts: B = N * n rows, prompt-major (the n rows of prompt 0 first)."""

    ids: torch.Tensor  # [B,T] long, the sampled tokens, pad id after the first EOS
    mask: torch.Tensor  # [B,T] float, 1 on sampled tokens up to and including EOS
    truncated: torch.Tensor  # [B] bool, stopped by max_new_tokens before any EOS
    logp: torch.Tensor | None  # [B,T] fp32 behaviour log-probs log mu(y_t), 0 on padding; None if greedy
    version: int  # policy version of the weights that sampled them

    @staticmethod
    def from_lists(
        ids: list[list[int]],
        logp: list[list[float]] | None,
        eos_token_ids: list[int],
        pad_id: int,
        version: int,
        device: torch.device,
    ) -> Completions:
        """Padded tensors from per-row token lists (and log-prob lists) as a server or vLLM returns them.
        A row ends at its first EOS or is truncated (no EOS): what follows an EOS is dropped."""
        eos = set(eos_token_ids)
        ends = [next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) for row in ids]
        lengths = torch.tensor(ends)
        mask = (torch.arange(max(ends, default=0))[None, :] < lengths[:, None]).float()
        truncated = torch.tensor([not row[:end] or row[end - 1] not in eos for row, end in zip(ids, ends)])
        return Completions(
            ids=_cut_and_padded(ids, ends, pad_id, torch.long).to(device),
            mask=mask.to(device),
            truncated=truncated.to(device),
            logp=None if logp is None else _cut_and_padded(logp, ends, 0.0, torch.float32).to(device),
            version=version,
        )


def _cut_and_padded(rows: Sequence[Sequence[float]], ends: list[int], fill: float, dtype: torch.dtype) -> torch.Tensor:
    """[len(rows), max(ends)]: row r's first ends[r] values, then ``fill``."""
    out = torch.full((len(rows), max(ends, default=0)), fill, dtype=dtype)
    for r, (row, end) in enumerate(zip(rows, ends)):
        out[r, :end] = torch.tensor(row[:end], dtype=dtype)
    return out


@dataclass(frozen=True)
class EngineSetup:
    """What the trainer tells an engine when it builds it."""

    model_path: str  # folder of the starting weights (after the warm start)
    tokenizer: Tokenizer  # the policy's tokenizer
    eos_token_ids: list[int]  # every id that ends a completion
    dtype: str  # "float32", "bfloat16" or "float16": what the trainer computes in
    device: torch.device  # the trainer process's device
    seed: int  # sampling seed of this rank
    max_model_len: int  # prompt + completion tokens the engine must hold
    #: the trainer's policy, ready for generation (ZeRO-3 shards gathered), as a context manager; only an
    #: engine that generates with the trainer's own module (``hf``) uses it
    live_policy: Callable[[], AbstractContextManager] = contextlib.nullcontext
    synced_gpus: bool = False  # parameters are sharded: every rank must run every decoding step


class EngineOptions(BaseModel):
    """Options every engine has; an engine's own options subclass this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field("hf", description="hf, vllm, vllm_server, or an import path module:Class")
    sync_tol: float | None = Field(
        None,
        gt=0,
        description="largest |log p| difference on the sync probe between engine and trainer "
        "before the run stops (null: 1e-4 when the trainer computes in fp32, 0.05 "
        "in bf16/fp16)",
    )


class Engine:
    """Base of every engine. Subclasses set ``Options`` and implement the methods below."""

    Options: ClassVar[type[EngineOptions]] = EngineOptions
    #: the engine generates with the trainer's own module (``EngineSetup.live_policy``): a sync copies
    #: nothing, so the trainer does not gather ZeRO-3 shards for it
    shares_trainer_weights: ClassVar[bool] = False

    def __init__(self, options: EngineOptions, setup: EngineSetup):
        self.options, self.setup = options, setup
        #: the policy version of the weights the engine samples with; None until the first sync, so the
        #: first generation always syncs and checks (the engine may have loaded the wrong weights or dtype)
        self.version: int | None = None

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> Completions:
        """Sample ``sampling.n`` completions for each prompt (token ids, no padding)."""
        raise NotImplementedError

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Make the engine sample from ``model``'s current weights (a plain module, every parameter whole:
        the trainer gathers ZeRO-3 shards first, unless ``shares_trainer_weights``) and record ``version``."""
        raise NotImplementedError

    def probe_logp(self, ids: list[int]) -> torch.Tensor:
        """[len(ids) - 1] fp32 log p(ids[t] | ids[:t]) for t >= 1 at temperature 1, from the weights the
        engine samples with (the trainer compares it with its own forward after every sync)."""
        raise NotImplementedError

    def sleep(self) -> None:
        """Release the engine's memory while the trainer updates (engines that can)."""

    def wake_up(self) -> None:
        """Take the memory back before the next sync or generation."""

    def close(self) -> None:
        """Stop whatever the engine started (processes, connections)."""


ENGINES: dict[str, str] = {  # registered name -> import path, so that `rlkit check` imports no vLLM
    "hf": "rlkit.rollout.hf:HFEngine",
    "vllm": "rlkit.rollout.vllm:VLLMEngine",
    "vllm_server": "rlkit.rollout.vllm_server:VLLMServerEngine",
}


def engine_class(type_name: str) -> type[Engine]:
    """The engine class for a registered name or an import path ``module:Class``."""
    path = ENGINES.get(type_name, type_name)
    if ":" not in path:
        raise KeyError(f"unknown engine {type_name!r}; registered: {sorted(ENGINES)}, or an import path module:Class")
    module, attr = path.rsplit(":", 1)
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise TypeError(f"{type_name} is not an rlkit rollout Engine")
    return cls


def engine_options(spec: dict) -> EngineOptions:
    """The validated options of a recipe's ``rollout.engine`` mapping."""
    return engine_class(spec.get("type", "hf")).Options(**spec)


def build_engine(spec: dict, setup: EngineSetup) -> Engine:
    options = engine_options(spec)
    return engine_class(options.type)(options, setup)
