"""Token log-probs and entropy in chunks equal the full-logits computation, values and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlkit.trainer import logprobs
from rlkit.trainer.logprobs import chunked_token_scores, completion_scores


def full_scores_fp64(hidden, ids, weight, temperature):
    """The textbook computation in float64: [n,V] logits, log-softmax, gather, entropy."""
    logp_all = (hidden.double() @ weight.double().T / temperature).log_softmax(-1)
    return logp_all.gather(-1, ids[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 1000])  # one token, an uneven split, everything at once
def test_chunked_scores_match_full_logits_values_and_gradients(monkeypatch, rows_per_chunk):
    V, H, n = 500, 32, 40
    monkeypatch.setattr(logprobs, "LOGITS_PER_CHUNK", rows_per_chunk * V)
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False)
    hidden = torch.randn(n, H, requires_grad=True)
    ids = torch.randint(V, (n,))
    logp, entropy = chunked_token_scores(hidden, ids, head, 0.7, with_entropy=True)
    (logp.sum() + 0.5 * entropy.sum()).backward()

    hidden64 = hidden.detach().double().requires_grad_()
    weight64 = head.weight.detach().double().requires_grad_()
    ref_logp, ref_entropy = full_scores_fp64(hidden64, ids, weight64, 0.7)
    (ref_logp.sum() + 0.5 * ref_entropy.sum()).backward()
    # fp32 against float64: logits of |z| ~ 3 summed over V = 500 terms round to ~1e-6 absolute
    torch.testing.assert_close(logp.double(), ref_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), hidden64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.weight.grad.double(), weight64.grad, rtol=1e-4, atol=1e-5)


def test_no_grad_chunks_keep_no_graph():
    head = torch.nn.Linear(8, 50, bias=False)
    with torch.no_grad():
        logp, entropy = chunked_token_scores(torch.randn(5, 8), torch.arange(5), head, 1.0, with_entropy=False)
    assert entropy is None and not logp.requires_grad and logp.shape == (5,)


def test_no_scored_token_still_reaches_the_head():
    """An empty micro-batch of tokens still gives every rank a backward through the head (DDP, ZeRO-3)."""
    head = torch.nn.Linear(8, 50, bias=False)
    logp, _ = chunked_token_scores(
        torch.zeros(0, 8, requires_grad=True), torch.zeros(0, dtype=torch.long), head, 1.0, with_entropy=False
    )
    logp.sum().backward()
    assert logp.shape == (0,) and head.weight.grad is not None and head.weight.grad.abs().sum() == 0


def test_completion_scores_score_completion_tokens_only_as_the_full_logits_do(monkeypatch):
    """The trainer's path (packed completion tokens, chunks from hidden states) against the full [b,T,V]
    logits of the same forward: equal log-probs, entropy and gradients on completion tokens, 0 elsewhere."""
    monkeypatch.setattr(logprobs, "LOGITS_PER_CHUNK", 3 * 64)  # 3 tokens per chunk at the tiny vocabulary
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        )
    )
    prompt_ids = torch.randint(3, 64, (3, 4))
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    completion_ids = torch.randint(3, 64, (3, 5))
    completion_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    args = (model, prompt_ids, prompt_mask, completion_ids, completion_mask, 0.8)

    fast = completion_scores(*args, with_entropy=True)
    (fast.logp.sum() + fast.entropy.sum()).backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = completion_scores(*args, with_entropy=True, with_logits=True)
    assert full.logits.shape == (3, 5, 64)
    on = completion_mask > 0
    ((full.logp * on).sum() + (full.entropy * on).sum()).backward()

    assert fast.logits is None
    assert (fast.logp[~on] == 0).all() and (fast.entropy[~on] == 0).all()
    # the same fp32 operations on the same hidden states; only the matmul's blocking may differ: a few fp32
    # roundings (eps 1.2e-7) of values of size ~log V = 4.2
    torch.testing.assert_close(fast.logp[on], full.logp[on], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.entropy[on], full.entropy[on], rtol=1e-6, atol=1e-6)
    for fast_grad, p in zip(fast_grads, model.parameters()):
        torch.testing.assert_close(fast_grad, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_chunked_scores_on_cuda_match_and_stay_under_a_sixth_of_the_naive_peak():
    """At Qwen2.5's vocabulary (V = 151936) and T = 2048 tokens, bf16 head as under mixed precision: the
    chunked log-probs and entropy equal the fp32 full-logits ones, and their extra peak (gradient to the
    hidden states included) is at most 0.15 of the naive one, whose [T,V] fp32 logits alone take 1.2 GB."""
    V, H, T = 151936, 896, 2048
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(V, (T,), device="cuda")

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        logp, entropy = fn()
        (logp.sum() + entropy.sum()).backward()
        torch.cuda.synchronize()
        hidden.grad = None
        return torch.cuda.max_memory_allocated() - before, logp.detach(), entropy.detach()

    def naive():
        logp_all = (head(hidden).float() / 0.7).log_softmax(-1)
        return logp_all.gather(-1, ids[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)

    naive_peak, naive_logp, naive_entropy = peak(naive)
    chunked_peak, logp, entropy = peak(lambda: chunked_token_scores(hidden, ids, head, 0.7, with_entropy=True))
    # the same bf16 logits and fp32 arithmetic per row; only reduction order may differ (~1e-6 of log V = 12)
    torch.testing.assert_close(logp, naive_logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(entropy, naive_entropy, rtol=1e-5, atol=1e-4)
    assert chunked_peak <= 0.15 * naive_peak, (chunked_peak, naive_peak)


def plain_forward_logp(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    """The unpacked reference: left-padded rows, 2D attention mask, full [b,T,V] logits."""
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], 1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logp_all = (logits[:, prompt_ids.shape[1] - 1 : -1].float() / temperature).log_softmax(-1)
    return logp_all.gather(-1, completion_ids[..., None]).squeeze(-1)


@pytest.mark.parametrize("prompt_tokens", [2, 12])  # short prompts: one segment per row; long: shared per group
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_equals_the_padded_forward_values_and_gradients(prompt_tokens, attention):
    """Packing (no padding, shared prompts) changes no log-prob and no gradient: against the plain padded
    forward on rows of two groups with prompts of different lengths and completions of different lengths."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            attn_implementation=attention,
        )
    )
    prompts = [torch.randint(3, 64, (prompt_tokens,)), torch.randint(3, 64, (prompt_tokens - 1,))]
    P, T = prompt_tokens, 6
    prompt_ids = torch.zeros(6, P, dtype=torch.long)
    prompt_mask = torch.zeros(6, P, dtype=torch.long)
    for row in range(6):  # rows 0-2 share prompt 0, rows 3-5 prompt 1 (one token shorter, left-padded)
        p = prompts[row // 3]
        prompt_ids[row, P - len(p) :], prompt_mask[row, P - len(p) :] = p, 1
    completion_ids = torch.randint(3, 64, (6, T))
    lengths = torch.tensor([6, 2, 4, 1, 5, 3])
    completion_mask = (torch.arange(T) < lengths[:, None]).float()
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask, 0.9)

    packed = completion_scores(model, *args)
    (packed.logp * torch.arange(1, T + 1)).sum().backward()  # position weights: every token's gradient counts
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    on = completion_mask > 0
    reference = plain_forward_logp(model, *args)
    (torch.where(on, reference, 0.0) * torch.arange(1, T + 1)).sum().backward()
    # fp32; the packed rows change matmul shapes and the attention's padding, not the arithmetic of a token
    torch.testing.assert_close(packed.logp[on], reference[on], rtol=1e-5, atol=1e-5)
    assert (packed.logp[~on] == 0).all()
    for packed_grad, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(packed_grad, p.grad, rtol=1e-4, atol=1e-6)


def test_packing_shares_long_prompts_and_drops_padding():
    from rlkit.trainer.packing import pack

    prompt_ids = torch.tensor([[0, 5, 6, 7, 8]] * 4 + [[9, 9, 9, 9, 9]] * 4)
    prompt_mask = torch.tensor([[0, 1, 1, 1, 1]] * 4 + [[1, 1, 1, 1, 1]] * 4)
    keep = torch.tensor([[1, 1, 0]] * 8, dtype=torch.bool)  # 2 scored tokens: 1 completion token read per row
    packed = pack(prompt_ids, prompt_mask, torch.ones(8, 3, dtype=torch.long), keep)
    # prompts (4 + 5 tokens) once each, then 4 x 1 completion token: segments of 8 and 9 tokens, one row each
    assert packed.input_ids.shape == (2, 9)
    assert sorted(packed.position_ids.tolist()) == [[0, 1, 2, 3, 4, 4, 4, 4, 0], [0, 1, 2, 3, 4, 5, 5, 5, 5]]
    long = pack(
        prompt_ids[:, -2:], prompt_mask[:, -2:], torch.ones(8, 6, dtype=torch.long), torch.ones(8, 6, dtype=torch.bool)
    )
    # prompts of 2 tokens, 5 completion tokens read: one segment of 7 tokens per row, no sharing
    assert long.input_ids.shape == (8, 7)


@pytest.mark.gpu
def test_packed_forward_and_sampler_logprobs_on_cuda_match_the_padded_forward():
    """On the GPU (SDPA's CUDA kernels, the packing's index tensors on the device): the packed log-probs
    and the sampler's equal the plain padded forward's."""
    from rlkit.models import build_char_tokenizer, build_tiny_model
    from rlkit.rollout import HFEngine, Sampling, sample

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0).cuda().eval()
    torch.manual_seed(0)
    b = sample(
        HFEngine.on(model, tok, [tok.eos_token_id]),
        ["12+34=", "7+5=", "99+99="],
        {},
        Sampling(n=4, max_new_tokens=8, temperature=0.7),
    )
    args = (b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, 0.7)
    packed = completion_scores(model, *args)
    with torch.no_grad():
        reference = plain_forward_logp(model, *args)
    on = b.completion_mask > 0
    assert packed.logp.is_cuda and b.logp.is_cuda
    # fp32 on CUDA (TF32 off by default for matmuls in torch): kernel choice and sum order only
    torch.testing.assert_close(packed.logp[on], reference[on], rtol=0, atol=1e-4)
    torch.testing.assert_close(b.logp[on], reference[on], rtol=0, atol=1e-4)
