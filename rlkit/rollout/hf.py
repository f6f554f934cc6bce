"""The ``hf`` engine: transformers' ``generate`` in the training process (KV-cached, batched).

transformers is imported where it is used: ``rlkit check`` imports this module for the engine's options and
must stay light.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from rlkit.rollout.engine import Completions, Engine, EngineOptions, EngineSetup, Sampling, prompt_seed

if TYPE_CHECKING:  # imported lazily at run time, so that `rlkit check` stays light
    from transformers import GenerationConfig


class HFEngine(Engine):
    """``model.generate`` on the trainer's own policy, in the training process (left-padded batch, KV cache).

    It holds no weights of its own: it generates with the trainer's module (``EngineSetup.live_policy``,
    which gathers ZeRO-3 shards), so :meth:`sync_weights` only records the version, and the probe check
    after it confirms that nothing else sampled (the check costs one forward of a few tokens).

    Every generation setting is rlkit's (:meth:`generation_config`): the loss assumes completions are drawn
    from softmax(logits / temperature), top-p filtered, so nothing may come from the checkpoint's
    ``generation_config.json`` (a repetition penalty or a top-k there would sample another distribution).
    """

    shares_trainer_weights = True

    @classmethod
    def on(cls, model, tokenizer, eos_token_ids: list[int], synced_gpus: bool = False) -> HFEngine:
        """An engine that generates with ``model`` as it is, outside a trainer (the warm start's checks,
        tests, scripts); ``synced_gpus`` when its parameters are sharded over ranks."""
        setup = EngineSetup(
            model_path="",
            tokenizer=tokenizer,
            eos_token_ids=eos_token_ids,
            dtype=str(model.dtype).removeprefix("torch."),
            device=model.device,
            seed=0,
            max_model_len=0,
            live_policy=lambda: contextlib.nullcontext(model),
            synced_gpus=synced_gpus,
        )
        return cls(EngineOptions(type="hf"), setup)

    def generation_config(self, sampling: Sampling) -> GenerationConfig:
        """Sampling at ``temperature`` with ``top_p`` (or greedy), nothing else: no top-k, no penalties,
        no minimum length; stops at any of the EOS ids or after ``max_new_tokens``."""
        from transformers import GenerationConfig

        # seeded sampling decodes greedily on the scores SeededSampling randomised
        draws = not sampling.greedy and sampling.seed is None
        options = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0} if draws else {}
        tok = self.setup.tokenizer
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=0,
            do_sample=draws,
            **options,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            eos_token_id=self.setup.eos_token_ids,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
        )

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> Completions:
        """The sampled tokens and, unless greedy, their log-probs (:class:`SampledTokenLogprobs`)."""
        from transformers import LogitsProcessorList

        tok, n = self.setup.tokenizer, sampling.n
        enc = tok.pad({"input_ids": prompt_ids}, padding=True, padding_side="left", return_tensors="pt")
        config = self.generation_config(sampling)
        recorder = None if sampling.greedy else SampledTokenLogprobs(sampling.temperature)
        with self.setup.live_policy() as model, _model_defaults(model, config):
            ids = enc.input_ids.repeat_interleave(n, 0).to(model.device)  # [B,P]
            attention = enc.attention_mask.repeat_interleave(n, 0).to(model.device)
            processors: list = [recorder] if recorder else []  # first: it must see the raw scores
            if sampling.seed is not None and not sampling.greedy:
                seeds = [prompt_seed(sampling.seed, p) + j for p in prompt_ids for j in range(n)]
                processors.append(SeededSampling(seeds, sampling.temperature, sampling.top_p, model.device))
            out = model.generate(
                input_ids=ids,
                attention_mask=attention,
                generation_config=config,
                synced_gpus=self.setup.synced_gpus,
                logits_processor=LogitsProcessorList(processors),
            )
        completion_ids = out[:, ids.shape[1] :]
        mask, truncated = mask_after_eos(completion_ids, self.setup.eos_token_ids)
        logp = recorder.result(completion_ids) * mask if recorder else None
        return Completions(
            ids=completion_ids.masked_fill(mask == 0, tok.pad_token_id),
            mask=mask,
            truncated=truncated,
            logp=logp,
            version=self.version or 0,
        )

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        self.version = version  # generation reads the trainer's module itself

    @torch.no_grad()
    def probe_logp(self, ids: list[int]) -> torch.Tensor:
        with self.setup.live_policy() as model:
            logits = model(torch.tensor([ids], device=model.device)).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:], device=logits.device)[:, None]).squeeze(-1)


class SeededSampling:
    """A logits processor that turns greedy decoding into sampling from softmax(scores / temperature), top-p
    filtered, with one random stream per row (a ``torch.Generator`` seeded with ``seeds[row]``), so a row's
    tokens do not depend on the rows beside it. The Gumbel-max trick: with E_v ~ Exp(1) independent,
    argmax_v (s_v / T - log E_v) is distributed as softmax(s / T) (-log E_v is Gumbel(0, 1)). ``generate``
    calls it once per decoding step with the scores of every row, finished rows included, so each row's
    stream advances by one draw of [V] per step."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        from transformers import TopPLogitsWarper

        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)  # -inf outside the nucleus
        noise = torch.empty_like(scores)
        for row, generator in zip(noise, self.generators):
            row.exponential_(generator=generator)
        return scores - noise.log()


class SampledTokenLogprobs:
    """A logits processor (``generate`` calls it with the step's scores) that records log softmax(logits /
    temperature) at each sampled token, so the trainer needs no forward pass
    for the old policy's log-probs. (``generate``'s own ``output_logits`` would keep every step's [B,V]
    scores until the end; this keeps one step's, and a [B] column per step.)

    ``generate`` runs custom processors before its sampling warpers (temperature, top-p), and rlkit's
    generation config enables no other processor, so the scores seen here are the raw logits: the
    distribution recorded is the untruncated softmax(logits / temperature), the one the training forward
    computes. At each step the token just sampled from the previous scores is in ``input_ids``: the
    previous scores [B,V] are kept one step, and the last token's log-prob is taken in :meth:`result`. A
    row that finished early gets the pad token's log-prob, which the caller masks.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []
        self.scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.scores is not None:
            self.steps.append(self._logp(self.scores, input_ids[:, -1]))
        self.scores = scores
        return scores

    def _logp(self, scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B] log softmax(scores / temperature) at ``tokens`` [B], from one step's ``scores`` [B,V]."""
        scaled = scores.float() / self.temperature
        return scaled.gather(-1, tokens[:, None]).squeeze(-1) - scaled.logsumexp(-1)

    def result(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """[B,T] fp32 log-probs of ``completion_ids`` [B,T], the tokens ``generate`` returned."""
        if self.scores is None:
            raise RuntimeError("generate never called the log-prob recorder: it sampled no token")
        return torch.stack([*self.steps, self._logp(self.scores, completion_ids[:, -1])], dim=1)


def mask_after_eos(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion ids [B,T] -> (mask [B,T] float: 1 up to and including the first token that is any of
    ``eos_token_ids``, 0 after; truncated [B] bool: no EOS at all)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).float(), ~is_eos.any(-1)


@contextmanager
def _model_defaults(model, config: GenerationConfig):
    """``generate`` fills every field its ``generation_config`` leaves unset (None: min_p, suppress_tokens,
    sequence_bias, ...) from ``model.generation_config``, the checkpoint's file. For the call, the model's
    defaults are ``config`` itself, so nothing is inherited (TRL did the same before transformers 5)."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved
