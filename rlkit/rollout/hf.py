"""Rollouts with transformers' ``generate``, in the training process (KV-cached, batched)."""

from __future__ import annotations

import torch

from rlkit.rollout.batch import RolloutBatch


class HFGenerateWorker:
    """Samples G completions per prompt with ``model.generate`` (left-padded batch, KV cache).

    The model given to :meth:`generate` must be a plain (unwrapped) ``PreTrainedModel``; under
    DeepSpeed ZeRO-3 the trainer passes it inside TRL's ``unwrap_model_for_generation``, which gathers
    the sharded weights first.
    """

    def __init__(self, tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p

    @torch.no_grad()
    def generate(self, model, prompts: list[str], columns: dict[str, list], samples_per_prompt: int,
                 greedy: bool = False, synced_gpus: bool = False) -> RolloutBatch:
        """``prompts``: rendered prompt strings; ``columns``: dataset columns aligned with ``prompts``."""
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        out = model.generate(
            **enc, max_new_tokens=self.max_new_tokens, num_return_sequences=samples_per_prompt,
            do_sample=not greedy, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            synced_gpus=synced_gpus, **sampling,
        )
        G = samples_per_prompt
        prompt_len = enc.input_ids.shape[1]
        completion_ids = out[:, prompt_len:]
        is_eos = completion_ids == tok.eos_token_id
        # keep tokens up to and including the first EOS
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        completion_mask = (~after_eos).float()
        completion_ids = completion_ids.masked_fill(after_eos, tok.pad_token_id)
        return RolloutBatch(
            prompt_ids=enc.input_ids.repeat_interleave(G, 0),
            prompt_mask=enc.attention_mask.repeat_interleave(G, 0),
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            group_ids=torch.arange(len(prompts), device=out.device).repeat_interleave(G),
            truncated=~is_eos.any(-1),
            prompts=[p for p in prompts for _ in range(G)],
            completions=tok.batch_decode(completion_ids, skip_special_tokens=True),
            columns={k: [v for v in vals for _ in range(G)] for k, vals in columns.items()},
        )
