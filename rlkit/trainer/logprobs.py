"""Per-token log-probabilities of completions under a model (training forward and scoring pass)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from rlkit.trainer.packing import pack

# Elements of one [c,V] fp32 block of logits (64 MiB): log-probs and entropy are computed c = LOGITS_PER_CHUNK // V
# tokens at a time, so their memory does not grow with the batch (c = 110 tokens at V = 152k).
LOGITS_PER_CHUNK = 2**24


@dataclass
class TokenScores:
    logp: torch.Tensor  # [b,T] log pi(completion token | prefix), 0 where not computed
    entropy: torch.Tensor | None  # [b,T] entropy of pi(. | prefix), nats
    logits: torch.Tensor | None  # [b,T,V] tempered logits (only when asked for), [n,V] when packed


def completion_scores(
    model,
    prompt_ids,
    prompt_mask,
    completion_ids,
    completion_mask,
    temperature: float,
    with_entropy: bool = False,
    with_logits: bool = False,
    positions: torch.Tensor | None = None,
) -> TokenScores:
    """Log-probs of ``completion_ids`` [b,T] after ``prompt_ids`` [b,P] (left-padded).

    Logits are divided by the sampling temperature, so ratios compare the distribution the rollout was
    actually drawn from. The forward is packed (:func:`rlkit.trainer.packing.pack`): no padding, nothing
    after the last scored token, and a prompt shared by several rows computed once where prompts are long;
    position ids count real tokens only, matching what ``generate`` used for left-padded prompts.

    Only the scored positions reach the vocabulary: the completion tokens (``completion_mask`` > 0), or
    ``positions`` [b,T] bool when given. A forward pre-hook on the output embedding takes the hidden
    states of those n positions ([n,H], row-major) and hands the model's own head an empty batch, so the
    model and its wrapper (DDP, DeepSpeed) run as usual. Log-probs and entropy are then computed from
    the hidden states in chunks (:func:`chunked_token_scores`): the [b,T,V] logits never exist, in any
    dtype. They are fp32, and 0 at the positions not scored.

    ``with_logits``: the tempered logits are returned too, in the model's dtype: [b,T,V] at every
    position, or [n,V] at ``positions`` (so token selection, TIP, cuts the memory of full-vocabulary
    losses); log-probs and entropy then come from those logits.
    """
    if positions is not None:
        keep = positions.bool()
    else:
        keep = torch.ones_like(completion_ids, dtype=torch.bool) if with_logits else completion_mask > 0
    inner = getattr(model, "module", model)
    head = inner.get_output_embeddings()
    packed = pack(prompt_ids, prompt_mask, completion_ids, keep)
    hidden = _hidden_states_at(
        model,
        head,
        packed.predictor[keep],
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=_attention_mask(inner, packed.attend),
    )
    ids = completion_ids[keep]
    logits = None
    if with_logits:
        logits = head(hidden)
        if temperature != 1.0:
            logits = logits / temperature  # in the model's dtype: an fp32 copy of [n,V] would be the memory peak
        logp, entropy = chunked_token_scores(logits, ids, torch.nn.Identity(), 1.0, with_entropy)
        if positions is None:
            logits = logits.view(*keep.shape, -1)
    else:
        logp, entropy = chunked_token_scores(hidden, ids, head, temperature, with_entropy)
    return TokenScores(
        logp=unpack(logp, keep), entropy=None if entropy is None else unpack(entropy, keep), logits=logits
    )


def _hidden_states_at(model, head: torch.nn.Module, index: torch.Tensor, **inputs) -> torch.Tensor:
    """The last hidden states [n,H] at ``index`` [n] (flat indices into the packed [r*L] positions). The
    model's own call to ``head`` gets an empty [0,H] batch, so it projects nothing."""
    captured = []

    def take(_, args):
        captured.append(args[0].flatten(0, 1)[index])
        return (args[0][:0, 0], *args[1:])

    hook = head.register_forward_pre_hook(take)
    try:
        model(**inputs, use_cache=False)
    finally:
        hook.remove()
    return captured[0]


def _attention_mask(model, attend: torch.Tensor) -> torch.Tensor:
    """The packed rows' 4D mask in the form the model's attention takes: boolean for SDPA, additive (0 or the
    dtype's minimum) for eager; transformers passes a 4D mask through unchanged."""
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        return attend
    if implementation == "eager":
        return torch.zeros(attend.shape, dtype=model.dtype, device=attend.device).masked_fill_(
            ~attend, torch.finfo(model.dtype).min
        )
    raise ValueError(
        f"rlkit's packed forward needs attn_implementation 'sdpa' or 'eager' (the model uses "
        f"{implementation!r}): its attention mask is a 4D mask"
    )


def chunked_token_scores(
    x: torch.Tensor, ids: torch.Tensor, project, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of ``ids`` [n] and entropy (nats) [n], fp32, under softmax(project(x) / temperature), where
    ``x`` [n,H] are hidden states and ``project`` the output embedding (or ``x`` are logits and
    ``project`` the identity):

        log p_i = z_i[ids_i] - logsumexp(z_i),   H_i = -sum_v p_iv log p_iv,   z = project(x) / temperature.

    Computed ``LOGITS_PER_CHUNK // V`` rows at a time in fp32. With gradients, each chunk runs under
    activation checkpointing: its [c,V] logits and log-softmax are freed after the forward and recomputed
    in the backward, so the peak is a few [c,V] blocks whatever n is, forward and backward. An empty ``x``
    still gives a graph to ``project``'s parameters (every rank's backward reaches every parameter).
    """
    vocab = getattr(project, "out_features", x.shape[-1])  # a Linear head (or PEFT's wrapper of one), else logits
    rows = max(1, LOGITS_PER_CHUNK // vocab)
    pieces = [
        checkpoint(_token_scores, xc, ic, project, temperature, with_entropy, use_reentrant=False)
        if torch.is_grad_enabled() and xc.requires_grad
        else _token_scores(xc, ic, project, temperature, with_entropy)
        for xc, ic in zip(x.split(rows), ids.split(rows))
    ]
    logp = torch.cat([p[0] for p in pieces])
    return logp, torch.cat([p[1] for p in pieces]) if with_entropy else None


def _token_scores(x, ids, project, temperature: float, with_entropy: bool):
    # by hand in fp32 rather than TRL's selective_log_softmax, whose fp32 path loops over rows in Python
    logp_all = (project(x).float() / temperature).log_softmax(-1)
    logp = logp_all.gather(-1, ids[:, None]).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None


def unpack(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[n] values at the True entries of ``positions`` [b,T] (row-major) -> [b,T], 0 elsewhere."""
    return values.new_zeros(positions.shape).index_put((positions.bool().nonzero(as_tuple=True)), values)
