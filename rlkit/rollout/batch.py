"""RolloutBatch: a step's rollouts with their provenance (the contract between sampling and training)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F

from rlkit.data import render_prompt, tokenize_prompts
from rlkit.rollout.engine import Completions, Engine, Sampling, Tokenizer

if TYPE_CHECKING:
    from rlkit.rollout.episodes import EpisodeRecord

Value = TypeVar("Value")


@dataclass
class RolloutBatch:
    """B = n_prompts * G completions, prompt of P tokens (left-padded), completion of T tokens.

    Rows of one prompt are consecutive and share a ``group_ids`` value (0..n_groups-1, in order).
    """

    prompt_ids: torch.Tensor  # [B,P] long, left-padded with the pad token
    prompt_mask: torch.Tensor  # [B,P] long, 1 on real prompt tokens
    completion_ids: torch.Tensor  # [B,T] long, right-padded after EOS
    completion_mask: torch.Tensor  # [B,T] float, 1 on generated tokens up to and including EOS
    loss_mask: torch.Tensor  # [B,T] float, 1 on the tokens the loss may train (the model's own;
    # equal to completion_mask for single-turn rollouts, 0 on tool output in multi-turn episodes)
    group_ids: torch.Tensor  # [B] long, 0..n_prompts-1
    truncated: torch.Tensor  # [B] bool, stopped by max_new_tokens before EOS
    prompts: list[str]  # [B] prompt text (chat messages rendered by the template)
    completions: list[str]  # [B] decoded completion, special tokens removed
    columns: dict[str, list]  # dataset columns, one value per row (for verifiers)
    policy_version: torch.Tensor  # [B] long, the policy version of the weights that sampled each row
    logp: torch.Tensor | None = None  # [B,T] fp32 behaviour log-probs log mu(y_t): each sampled token's
    # log-prob under softmax(logits / temperature) as the engine computed it, 0 after EOS; None if greedy
    rewards: torch.Tensor | None = None  # [B] total reward, once the verifiers ran (NaN = all abstained)
    episodes: list[EpisodeRecord] | None = None  # [B] multi-turn episodes: transcript, tool calls, env reward

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @staticmethod
    def from_completions(
        prompts: list, columns: dict[str, list], prompt_ids: list[list[int]], out: Completions, tokenizer: Tokenizer
    ) -> RolloutBatch:
        """The batch of ``out``, the engine's completions of ``prompts`` (with their token ids and dataset
        ``columns``, one entry per prompt), ``n = len(out) / len(prompts)`` rows per prompt."""
        n = len(out.ids) // max(1, len(prompts))
        device = out.ids.device
        enc = tokenizer.pad({"input_ids": prompt_ids}, padding=True, padding_side="left", return_tensors="pt")
        return RolloutBatch(
            prompt_ids=enc.input_ids.repeat_interleave(n, 0).to(device),
            prompt_mask=enc.attention_mask.repeat_interleave(n, 0).to(device),
            completion_ids=out.ids,
            completion_mask=out.mask,
            loss_mask=out.mask.clone(),
            group_ids=torch.arange(len(prompts), device=device).repeat_interleave(n),
            truncated=out.truncated,
            prompts=[text for text in (render_prompt(p, tokenizer) for p in prompts) for _ in range(n)],
            completions=tokenizer.batch_decode(out.ids, skip_special_tokens=True),
            columns={k: [v for v in vals for _ in range(n)] for k, vals in columns.items()},
            policy_version=torch.full((len(out.ids),), out.version, dtype=torch.long, device=device),
            logp=out.logp,
        )

    @property
    def n_groups(self) -> int:
        return int(self.group_ids.max()) + 1 if len(self) else 0

    @property
    def lengths(self) -> torch.Tensor:
        """[B] completion lengths in tokens."""
        return self.completion_mask.sum(-1)

    def select_groups(self, keep: torch.Tensor) -> RolloutBatch:
        """The groups where ``keep`` [n_groups] (bool) is True, renumbered 0..k-1 in their order."""
        rows = keep[self.group_ids]
        new_id = keep.long().cumsum(0) - 1
        out: dict[str, Any] = {}  # field name -> its selected rows
        for f in fields(self):
            value = getattr(self, f.name)
            if torch.is_tensor(value):
                out[f.name] = value[rows]
            elif isinstance(value, list):
                out[f.name] = [v for v, r in zip(value, rows.tolist()) if r]
        out["columns"] = {k: [v for v, r in zip(vals, rows.tolist()) if r] for k, vals in self.columns.items()}
        out["group_ids"] = new_id[self.group_ids[rows]]
        return replace(self, **out)

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
        """Rows of all ``batches`` (group ids shifted to stay distinct), re-padded to common lengths."""
        P = max(b.prompt_ids.shape[1] for b in batches)
        T = max(b.completion_ids.shape[1] for b in batches)
        left = lambda t, v: F.pad(t, (P - t.shape[1], 0), value=v)  # noqa: E731
        right = lambda t, v: F.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
        offsets = torch.tensor([0] + [b.n_groups for b in batches[:-1]], device=batches[0].group_ids.device).cumsum(0)
        rewards = _all_or_none([b.rewards for b in batches], "rewards")
        logp = _all_or_none([b.logp for b in batches], "logp")
        episodes = _all_or_none([b.episodes for b in batches], "episodes")
        return RolloutBatch(
            prompt_ids=torch.cat([left(b.prompt_ids, pad_token_id) for b in batches]),
            prompt_mask=torch.cat([left(b.prompt_mask, 0) for b in batches]),
            completion_ids=torch.cat([right(b.completion_ids, pad_token_id) for b in batches]),
            completion_mask=torch.cat([right(b.completion_mask, 0) for b in batches]),
            loss_mask=torch.cat([right(b.loss_mask, 0) for b in batches]),
            group_ids=torch.cat([b.group_ids + o for b, o in zip(batches, offsets)]),
            truncated=torch.cat([b.truncated for b in batches]),
            prompts=[p for b in batches for p in b.prompts],
            completions=[c for b in batches for c in b.completions],
            columns={k: [v for b in batches for v in b.columns[k]] for k in batches[0].columns},
            policy_version=torch.cat([b.policy_version for b in batches]),
            rewards=None if rewards is None else torch.cat(rewards),
            logp=None if logp is None else torch.cat([right(t, 0.0) for t in logp]),
            episodes=None if episodes is None else [e for b in episodes for e in b],
        )


def _all_or_none(values: list[Value | None], name: str) -> list[Value] | None:
    """``values`` when every batch has its ``name`` tensor, None when none has (concatenating a batch that
    has it with one that has not would lose it or fail)."""
    present = [v for v in values if v is not None]
    if present and len(present) < len(values):
        raise ValueError(f"cannot concatenate rollout batches where only some have {name}")
    return present or None


def sample(
    engine: Engine, prompts: list, columns: dict[str, list], sampling: Sampling, max_prompt_tokens: int = 512
) -> RolloutBatch:
    """Rollouts of dataset ``prompts`` (strings or chat messages, tokenized by
    :func:`rlkit.data.tokenize_prompts`, then cut to their last ``max_prompt_tokens`` tokens) from ``engine``;
    ``columns``: the dataset columns aligned with ``prompts``."""
    tok = engine.setup.tokenizer
    ids = [p[-max_prompt_tokens:] for p in tokenize_prompts(prompts, tok)]
    return RolloutBatch.from_completions(prompts, columns, ids, engine.generate(ids, sampling), tok)
