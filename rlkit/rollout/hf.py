"""Rollouts with transformers' ``generate``, in the training process (KV-cached, batched)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlkit.data import render_prompt, tokenize_prompts
from rlkit.rollout.batch import RolloutBatch


class HFGenerateWorker:
    """Samples G completions per prompt with ``model.generate`` (left-padded batch, KV cache).

    Every generation setting is rlkit's (:meth:`generation_config`): the loss assumes completions are drawn
    from softmax(logits / temperature), top-p filtered, so nothing may come from the checkpoint's
    ``generation_config.json`` (a repetition penalty or a top-k there would sample another distribution).
    ``eos_token_ids``: every id that ends a completion (:func:`rlkit.models.eos_token_ids`).

    The model given to :meth:`generate` must be a plain (unwrapped) ``PreTrainedModel``; under
    DeepSpeed ZeRO-3 the trainer passes it inside TRL's ``unwrap_model_for_generation``, which gathers
    the sharded weights first.
    """

    def __init__(self, tokenizer, eos_token_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, max_prompt_tokens: int = 512):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_prompt_tokens = max_prompt_tokens

    def generation_config(self, greedy: bool) -> GenerationConfig:
        """Sampling at ``temperature`` with ``top_p`` (or greedy), nothing else: no top-k, no penalties,
        no minimum length; stops at any of ``eos_token_ids`` or after ``max_new_tokens``."""
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, min_new_tokens=0, do_sample=not greedy, **sampling,
            typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1,
            eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    @torch.no_grad()
    def generate(self, model, prompts: list, columns: dict[str, list], samples_per_prompt: int,
                 greedy: bool = False, synced_gpus: bool = False, with_logp: bool = False) -> RolloutBatch:
        """``prompts``: strings or chat messages (tokenized by :func:`rlkit.data.tokenize_prompts`, then cut
        to their last ``max_prompt_tokens`` tokens); ``columns``: dataset columns aligned with ``prompts``.
        ``with_logp``: also return the sampled tokens' log-probs (:class:`SampledTokenLogprobs`)."""
        tok, G = self.tokenizer, samples_per_prompt
        ids = [p[-self.max_prompt_tokens:] for p in tokenize_prompts(prompts, tok)]
        enc = tok.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")
        prompt_ids = enc.input_ids.repeat_interleave(G, 0).to(model.device)          # [B,P]
        prompt_mask = enc.attention_mask.repeat_interleave(G, 0).to(model.device)    # [B,P]
        config = self.generation_config(greedy)
        recorder = SampledTokenLogprobs(self.temperature) if with_logp else None
        with _model_defaults(model, config):
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                                 synced_gpus=synced_gpus, logits_processor=LogitsProcessorList([recorder] if recorder
                                                                                               else []))
        completion_ids = out[:, prompt_ids.shape[1]:]
        completion_mask, truncated = mask_after_eos(completion_ids, self.eos_token_ids)
        logp = recorder.result(completion_ids) * completion_mask if recorder else None
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            group_ids=torch.arange(len(prompts), device=out.device).repeat_interleave(G),
            truncated=truncated,
            prompts=[text for text in map(lambda p: render_prompt(p, tok), prompts) for _ in range(G)],
            completions=tok.batch_decode(completion_ids, skip_special_tokens=True),
            columns={k: [v for v in vals for _ in range(G)] for k, vals in columns.items()},
            logp=logp,
        )


class SampledTokenLogprobs(LogitsProcessor):
    """Records log softmax(logits / temperature) at each sampled token, so the trainer needs no forward pass
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
            self.steps.append(self._logp(input_ids[:, -1]))
        self.scores = scores
        return scores

    def _logp(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = self.scores.float() / self.temperature
        return scores.gather(-1, tokens[:, None]).squeeze(-1) - scores.logsumexp(-1)

    def result(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """[B,T] fp32 log-probs of ``completion_ids`` [B,T], the tokens ``generate`` returned."""
        return torch.stack([*self.steps, self._logp(completion_ids[:, -1])], dim=1)


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
