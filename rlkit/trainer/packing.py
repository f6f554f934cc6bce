"""Packed forward passes: no padding, and a prompt computed once for the completions that share it.

A micro-batch of b rows (left-padded prompts [b,P], right-padded completions [b,T]) becomes r packed rows
of L tokens. Each *segment* of a packed row is a prompt's real tokens followed by the completion tokens
of one row, or, when prompts are shared, of every row with that prompt (a group). A 4D attention mask
lets each token see only its own segment's prompt and its own completion, causally; position ids restart
at 0 with every segment and continue from the prompt into each completion, so every completion sees exactly
the sequence it would see alone. Gradients reach a shared prompt's hidden states from all its completions.

A completion needs as input only its tokens before the last scored one (its last scored token is predicted,
never read), and nothing after it: after-EOS padding is never computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [r,L] long, pad id 0 after the last segment of a row
    position_ids: torch.Tensor  # [r,L] long
    attend: torch.Tensor  # [r,1,L,L] bool, True where a query (dim 2) may attend to a key (dim 3)
    predictor: torch.Tensor  # [b,T] long: flat index into [r*L] of the hidden state that predicts each
    #                                completion token (meaningful where scored)


def pack(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, keep: torch.Tensor
) -> Packed:
    """Pack the rows for scoring the completion positions where ``keep`` [b,T] is True.

    Prompts are shared (one segment per distinct prompt) when they hold at least half of the unshared
    tokens, i.e. when prompts are long relative to the completions: that is where sharing removes work;
    with long completions, one segment per row keeps the attention span (and the mask) at a row's length.
    Segments are placed first-fit, longest first, into rows as long as the longest segment.
    """
    device = completion_ids.device
    b, P = prompt_ids.shape
    T = completion_ids.shape[1]
    t = torch.arange(T, device=device)
    n_inputs = (torch.where(keep, t + 1, 0).amax(-1) - 1).clamp(min=0)  # completion tokens read: [b]
    p_len = prompt_mask.sum(-1)
    prompt_of = torch.unique(torch.where(prompt_mask.bool(), prompt_ids, -1), dim=0, return_inverse=True)[1]
    p_len_l, n_l, prompt_l = p_len.tolist(), n_inputs.tolist(), prompt_of.tolist()  # one host sync

    share = sum(p_len_l) >= sum(n_l)
    segments: dict[int, list[int]] = {}  # segment key -> its rows
    for row in range(b):
        segments.setdefault(prompt_l[row] if share else row, []).append(row)
    seg_rows = sorted(segments.values(), key=lambda rows: -(p_len_l[rows[0]] + sum(n_l[r] for r in rows)))
    length = [p_len_l[rows[0]] + sum(n_l[r] for r in rows) for rows in seg_rows]
    L = max(length)
    fill: list[int] = []  # tokens used in each packed row
    # pieces, in packed order: (flat source index, length, first position id, owner row or -1, segment, dest)
    pieces: list[tuple[int, int, int, int, int, int]] = []
    prompt_last, comp_start = [0] * b, [0] * b
    for seg, (rows, n) in enumerate(zip(seg_rows, length)):
        r = next((i for i, used in enumerate(fill) if used + n <= L), None)
        if r is None:
            r, fill = len(fill), fill + [0]
        dest = r * L + fill[r]
        p = p_len_l[rows[0]]
        pieces.append((rows[0] * (P + T) + P - p, p, 0, -1, seg, dest))
        for row in rows:
            prompt_last[row] = dest + p - 1
        at = dest + p
        for row in rows:
            pieces.append((row * (P + T) + P, n_l[row], p, row, seg, at))
            comp_start[row] = at
            at += n_l[row]
        fill[r] += n
    rows_n = len(fill)

    src, size, pos0, owner, segment, dest = (torch.tensor(c, device=device) for c in zip(*pieces))
    offset = torch.arange(int(size.sum()), device=device) - torch.repeat_interleave(size.cumsum(0) - size, size)
    at = torch.repeat_interleave(dest, size) + offset
    flat_ids = torch.cat([prompt_ids, completion_ids], 1).flatten()
    input_ids = torch.zeros(rows_n * L, dtype=torch.long, device=device)
    input_ids[at] = flat_ids[torch.repeat_interleave(src, size) + offset]
    position_ids = torch.zeros_like(input_ids)
    position_ids[at] = torch.repeat_interleave(pos0, size) + offset
    seg_of = torch.full_like(input_ids, -1)
    seg_of[at] = torch.repeat_interleave(segment, size)
    owner_of = torch.full_like(input_ids, -1)
    owner_of[at] = torch.repeat_interleave(owner, size)

    seg_of, owner_of = seg_of.view(rows_n, L), owner_of.view(rows_n, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    same_segment = seg_of[:, :, None] == seg_of[:, None, :]
    visible = (owner_of[:, None, :] == -1) | (owner_of[:, :, None] == owner_of[:, None, :])
    attend = (same_segment & visible & causal) | torch.eye(L, dtype=torch.bool, device=device)  # padding sees itself

    prompt_last_t = torch.tensor(prompt_last, device=device)[:, None]
    comp_start_t = torch.tensor(comp_start, device=device)[:, None]
    predictor = torch.where(t == 0, prompt_last_t, comp_start_t + t - 1)
    return Packed(
        input_ids=input_ids.view(rows_n, L),
        position_ids=position_ids.view(rows_n, L),
        attend=attend[:, None],
        predictor=predictor,
    )
