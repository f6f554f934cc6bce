"""Multi-turn rollouts, token in and token out: the model's turns exactly as sampled, the environment's
replies encoded once, one training row per episode.

An episode's row, after its prompt::

    [model turn 1, as sampled, EOS included][reply 1, as the template renders it][model turn 2] ... [final turn]
     loss mask 1, behaviour log-probs        loss mask 0, log-prob 0              1                   1

Nothing the model generated is decoded and encoded again: its text is decoded only for the environment to
read. A reply is the chat template's rendering of the reply messages after a conversation, minus the
rendering of that conversation (:func:`reply_ids`), tokenized alone; what the template would put after an
assistant message (Qwen's newline after ``<|im_end|>``, for one) is not in the row, since the model's turn
ends at its sampled EOS, as in verl and SkyRL.

Turn 1 is the same engine call as a single-turn rollout (``sampling.n`` completions of each prompt), so an
episode that ends after one turn is, token for token, the single-turn rollout. Later turns sample one
continuation of each running episode. With sharded parameters (``synced_gpus``) every rank must make the
same number of ``generate`` calls: ``any_rank`` tells each rank whether any rank still has a running
episode, and a rank with none generates one token for a stand-in prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from rlkit.data import render_prompt, tokenize_prompts
from rlkit.environments.base import Environment
from rlkit.environments.spec import EnvironmentSpec
from rlkit.environments.tools import ToolError
from rlkit.metrics import Metrics
from rlkit.rollout.batch import RolloutBatch
from rlkit.rollout.engine import Completions, Engine, Sampling, Tokenizer


@dataclass(frozen=True)
class Limits:
    max_turns: int  # model turns; an episode still running after them is truncated
    max_tokens: int  # tokens after the prompt, the model's and the replies'; past them it is truncated


@dataclass(frozen=True)
class EpisodeRecord:
    """What an episode did, beside its tokens (one per row of the rollout batch)."""

    transcript: list[dict]  # the turns as chat messages: {"role": "assistant" | "tool" | ..., "content": text}
    turns: int  # model turns
    tool_calls: int
    tool_errors: dict[str, int]  # failed calls by kind (rlkit.environments.tools.ToolError.KINDS)
    env_reward: float  # the environment's rewards, summed over the turns


@dataclass
class _Episode:
    env: Environment
    prompt: int  # index of its prompt
    ids: list[int] = field(default_factory=list)  # tokens after the prompt
    model: list[float] = field(default_factory=list)  # loss mask: 1 on the model's tokens
    logp: list[float] = field(default_factory=list)  # behaviour log-probs, 0 on reply tokens
    transcript: list[dict] = field(default_factory=list)
    reward: float = 0.0
    tool_calls: int = 0
    tool_errors: Counter = field(default_factory=Counter)
    done: bool = False
    truncated: bool = False

    @property
    def final(self) -> str:
        turns = [m["content"] for m in self.transcript if m["role"] == "assistant"]
        return turns[-1] if turns else ""


def reply_ids(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """The tokens of ``messages`` (an environment's reply) and the next assistant header, as the chat template
    renders them after a conversation: the rendering with them minus the rendering without, encoded alone."""
    base = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "?"}]
    before = tokenizer.apply_chat_template(base, tools=tools, tokenize=False)
    after = tokenizer.apply_chat_template(base + messages, tools=tools, tokenize=False, add_generation_prompt=True)
    if not after.startswith(before):
        raise ValueError(
            "the chat template renders a conversation differently once messages follow it, so a reply cannot be "
            f"appended token for token: {before[-80:]!r} is not a prefix of {after[: len(before) + 80]!r}"
        )
    return tokenizer(after[len(before) :], add_special_tokens=False).input_ids


def run_episodes(
    engine: Engine,
    env: EnvironmentSpec,
    prompts: list,
    columns: dict[str, list],
    sampling: Sampling,
    max_prompt_tokens: int = 512,
    any_rank: Callable[[bool], bool] = bool,
) -> RolloutBatch:
    """``sampling.n`` episodes of each prompt (strings or chat messages, offered ``env``'s tools through the
    chat template), each in the environment ``env.make(row)`` builds for its dataset row. Rows are
    prompt-major, as :func:`rlkit.rollout.sample`'s; ``completions`` holds each episode's final model turn
    (what verifiers score) and ``episodes`` its :class:`EpisodeRecord`."""
    tok, n, tools = engine.setup.tokenizer, sampling.n, env.schemas()
    prompt_ids = [p[-max_prompt_tokens:] for p in tokenize_prompts(prompts, tok, tools)]
    rows = [{"prompt": p, **{k: v[i] for k, v in columns.items()}} for i, p in enumerate(prompts)]
    episodes = [_Episode(env.make(rows[i]), i) for i in range(len(prompts)) for _ in range(n)]
    limits = Limits(env.max_turns, env.max_tokens)
    first = engine.generate(prompt_ids, sampling)  # every rank makes this call
    _take_turn(episodes, first, limits, tok, tools, last=limits.max_turns == 1)
    for turn in range(1, limits.max_turns):
        running = [e for e in episodes if not e.done]
        if not any_rank(bool(running)):
            break
        if running:
            budget = max(limits.max_tokens - len(e.ids) for e in running)
            histories = [prompt_ids[e.prompt] + e.ids for e in running]
            one = replace(sampling, n=1, max_new_tokens=min(sampling.max_new_tokens, budget))
            _take_turn(running, engine.generate(histories, one), limits, tok, tools, last=turn == limits.max_turns - 1)
        else:  # another rank still runs episodes: join its decoding steps
            engine.generate([prompt_ids[0]], replace(sampling, n=1, max_new_tokens=1))
    return _batch(episodes, prompts, columns, prompt_ids, tok, tools, sampling, first.version, engine.setup.device)


def _take_turn(running: list[_Episode], out: Completions, limits: Limits, tok, tools, last: bool) -> None:
    """Append each episode's sampled turn (row r of ``out`` is ``running[r]``'s) and the environment's reply;
    after the ``last`` turn an episode the environment does not end is truncated, its reply left out."""
    lengths = out.mask.sum(-1).long().tolist()
    for r, e in enumerate(running):
        room = limits.max_tokens - len(e.ids)
        ids = out.ids[r, : min(lengths[r], room)].tolist()
        e.ids += ids
        e.model += [1.0] * len(ids)
        e.logp += [0.0] * len(ids) if out.logp is None else out.logp[r, : len(ids)].tolist()
        text = tok.batch_decode(torch.tensor([ids]), skip_special_tokens=True)[0]
        e.transcript.append({"role": "assistant", "content": text})
        if bool(out.truncated[r]) or lengths[r] > room:  # the turn never ended: nothing to reply to
            e.done = e.truncated = True
            continue
        reply = e.env.step(text)
        e.reward += reply.reward
        e.tool_calls += reply.tool_calls
        e.tool_errors.update(reply.tool_errors)
        if reply.done or last:
            e.done, e.truncated = True, not reply.done
            continue
        e.transcript += reply.messages
        observation = reply_ids(tok, reply.messages, tools)
        if len(e.ids) + len(observation) >= limits.max_tokens:  # no room left for the model's next turn
            e.done = e.truncated = True
            continue
        e.ids += observation
        e.model += [0.0] * len(observation)
        e.logp += [0.0] * len(observation)


def _batch(
    episodes: list[_Episode], prompts, columns, prompt_ids, tok, tools, sampling: Sampling, version: int, device
) -> RolloutBatch:
    n = sampling.n
    T = max((len(e.ids) for e in episodes), default=0)

    def padded(values: list[list], fill, dtype) -> torch.Tensor:
        return torch.tensor([v + [fill] * (T - len(v)) for v in values], dtype=dtype, device=device).reshape(-1, T)

    enc = tok.pad({"input_ids": prompt_ids}, padding=True, padding_side="left", return_tensors="pt")
    return RolloutBatch(
        prompt_ids=enc.input_ids.repeat_interleave(n, 0).to(device),
        prompt_mask=enc.attention_mask.repeat_interleave(n, 0).to(device),
        completion_ids=padded([e.ids for e in episodes], tok.pad_token_id, torch.long),
        completion_mask=padded([[1.0] * len(e.ids) for e in episodes], 0.0, torch.float32),
        loss_mask=padded([e.model for e in episodes], 0.0, torch.float32),
        group_ids=torch.arange(len(prompts), device=device).repeat_interleave(n),
        truncated=torch.tensor([e.truncated for e in episodes], device=device),
        prompts=[text for text in (render_prompt(p, tok, tools) for p in prompts) for _ in range(n)],
        completions=[e.final for e in episodes],
        columns={k: [v for v in vals for _ in range(n)] for k, vals in columns.items()},
        policy_version=torch.full((len(episodes),), version, dtype=torch.long, device=device),
        logp=None if sampling.greedy else padded([e.logp for e in episodes], 0.0, torch.float32),
        episodes=[
            EpisodeRecord(
                transcript=e.transcript,
                turns=sum(m["role"] == "assistant" for m in e.transcript),
                tool_calls=e.tool_calls,
                tool_errors=dict(e.tool_errors),
                env_reward=e.reward,
            )
            for e in episodes
        ],
    )


def episode_ids(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None, eos: int) -> tuple[list, list]:
    """A demonstration episode (chat messages after the prompt: assistant turns, and the replies between them)
    laid out as :func:`run_episodes` lays out a sampled one: each assistant turn's text encoded and ended with
    ``eos``, each run of other messages as :func:`reply_ids`. Returns (ids, loss mask: 1 on assistant tokens),
    for the supervised warm start."""
    ids: list[int] = []
    mask: list[int] = []
    pending: list[dict] = []
    for message in [*messages, None]:
        if message is not None and message["role"] != "assistant":
            pending.append(message)
            continue
        if pending:
            reply = reply_ids(tokenizer, pending, tools)
            ids, mask, pending = ids + reply, mask + [0] * len(reply), []
        if message is not None:
            turn = tokenizer(message["content"], add_special_tokens=False).input_ids + [eos]
            ids, mask = ids + turn, mask + [1] * len(turn)
    return ids, mask


def episode_metrics(metrics: Metrics, episodes: list[EpisodeRecord], rewards: torch.Tensor, threshold: float) -> None:
    """The ``episode/`` metrics of a rollout batch: turns, tool calls and failed calls (by kind) per episode,
    the share of episodes that called a tool, the mean reward with and without a tool call, and, of the
    episodes whose reward is at least ``threshold`` (eval.pass_threshold: correct), the share that called one."""
    used = torch.tensor([e.tool_calls > 0 for e in episodes], device=rewards.device)
    correct = rewards >= threshold
    metrics.mean("episode/turns", torch.tensor([float(e.turns) for e in episodes]))
    metrics.mean("episode/tool_calls", torch.tensor([float(e.tool_calls) for e in episodes]))
    metrics.mean("episode/tool_errors", torch.tensor([float(sum(e.tool_errors.values())) for e in episodes]))
    for kind in ToolError.KINDS:
        metrics.mean(f"episode/tool_errors/{kind}", torch.tensor([float(e.tool_errors.get(kind, 0)) for e in episodes]))
    metrics.mean("episode/tool_use_frac", used.float())
    metrics.mean("episode/reward_with_tool", rewards, used)
    metrics.mean("episode/reward_without_tool", rewards, ~used)
    metrics.mean("episode/tool_use_of_correct", used.float(), correct)
