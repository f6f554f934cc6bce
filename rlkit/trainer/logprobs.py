"""Per-token log-probabilities of completions under a model (training forward and scoring pass)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.trainer.utils import entropy_from_logits, selective_log_softmax


@dataclass
class TokenScores:
    logp: torch.Tensor                  # [b,T] log pi(completion token | prefix)
    entropy: torch.Tensor | None        # [b,T] entropy of pi(. | prefix), nats
    logits: torch.Tensor | None         # [b,T,V] tempered logits (only when asked for), [n,V] when packed


def completion_scores(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float,
                      with_entropy: bool = False, with_logits: bool = False,
                      positions: torch.Tensor | None = None) -> TokenScores:
    """Log-probs of ``completion_ids`` [b,T] after ``prompt_ids`` [b,P] (left-padded).

    Logits are divided by the sampling temperature, so ratios compare the distribution the rollout was
    actually drawn from. Only the T+1 last positions are projected to the vocabulary
    (``logits_to_keep``), the logits stay in the model's dtype, and TRL's ``selective_log_softmax`` and
    chunked entropy avoid a full [b,T,V] log-softmax copy; log-probs and entropy are returned in fp32.
    Position ids count real tokens only, matching what ``generate`` used for left-padded prompts.

    ``positions`` [b,T] bool: project only these positions to the vocabulary (a forward pre-hook on the
    output embedding packs the hidden states, so the model and its wrapper run as usual): logits are
    then [n,V] for the n True positions in row-major order, and logp/entropy are 0 elsewhere. This is
    what makes token selection (TIP) cut the memory of full-vocabulary losses.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    T = completion_ids.shape[1]
    hook = None
    if positions is not None:  # the last of the T+1 kept positions predicts past the completion: never kept
        packed = torch.cat([positions.bool(), positions.new_zeros(positions.shape[0], 1, dtype=torch.bool)], 1)
        head = getattr(model, "module", model).get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda _, args: (args[0][packed], *args[1:]))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=T + 1, use_cache=False).logits
    finally:
        if hook is not None:
            hook.remove()
    logits = logits[:, :-1] if positions is None else logits
    if temperature != 1.0:
        logits = logits / temperature  # in the model's dtype: an fp32 copy of [b,T,V] is the memory peak
    ids = completion_ids if positions is None else completion_ids[positions.bool()]
    logp = selective_log_softmax(logits, ids).float()
    entropy = entropy_from_logits(logits).float() if with_entropy else None
    if positions is not None:
        logp = unpack(logp, positions)
        entropy = None if entropy is None else unpack(entropy, positions)
    return TokenScores(logp=logp, entropy=entropy, logits=logits if with_logits else None)


def unpack(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[n] values at the True entries of ``positions`` [b,T] (row-major) -> [b,T], 0 elsewhere."""
    return values.new_zeros(positions.shape).index_put((positions.bool().nonzero(as_tuple=True)), values)
