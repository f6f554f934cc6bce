"""Peak memory of token log-probs + entropy, chunked vs naive: ``python -m benchmarks.logprob_memory``.

Options: ``[--vocab 151936] [--hidden 896] [--tokens 2048] [--dtype float32|bfloat16] [--device cpu|cuda]``.

A random hidden state [T,H] goes through an LM-head weight [V,H] (Qwen2.5-0.5B's sizes by default) to the
log-prob of T random tokens and the entropy of each position, at temperature 0.7, then backward of their sum:

- ``naive``: the whole [T,V] logits in fp32, ``log_softmax``, ``gather`` and ``-(p * log p).sum(-1)``;
- ``chunked``: rlkit's :func:`rlkit.trainer.logprobs.chunked_token_scores`, the path of every trainer forward.

Each variant runs in a fresh process, for three passes: without gradient (the scoring pass); with the
gradient to the hidden state, the head frozen (as under LoRA); with the head trained too. Reported: the peak
memory above what the process held before the computation (the inputs and the weight),
``torch.cuda.max_memory_allocated`` on a GPU, the growth of the peak resident set (``ru_maxrss``) on a CPU
(torch's CPU allocator returns large blocks to the system, so the resident set follows the tensors).

The last line is ``extra_peak_ratio=Z``: chunked over naive, the larger of the first two passes. The third
is shown apart: a trained head's gradient [V,H] is the model's gradient memory, not the log-probs', and
chunking adds one more [V,H] block to it (autograd sums the chunks' weight gradients in a buffer before
adding it to ``.grad``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from benchmarks.peak_memory import peak_above_start
from rlkit.trainer.logprobs import chunked_token_scores

TEMPERATURE = 0.7


def naive_token_scores(hidden: torch.Tensor, ids: torch.Tensor, head: torch.nn.Linear) -> tuple[torch.Tensor, ...]:
    """The textbook computation: [T,V] fp32 logits, log-softmax, gather, entropy."""
    logp_all = (head(hidden).float() / TEMPERATURE).log_softmax(-1)
    return logp_all.gather(-1, ids[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


PASSES = {
    "nograd": "forward, no gradient",
    "hidden": "forward and backward, head frozen",
    "all": "forward and backward, head trained",
}


def measure(variant: str, mode: str, vocab: int, hidden_size: int, tokens: int, dtype: str, device: str) -> dict:
    """Peak memory (MiB) of one computation of ``variant`` above the memory held before it."""
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=getattr(torch, dtype))
    head.requires_grad_(mode == "all")
    hidden = torch.randn(tokens, hidden_size, device=device, dtype=head.weight.dtype, requires_grad=mode != "nograd")
    ids = torch.randint(vocab, (tokens,), device=device)
    with peak_above_start(device) as peak, torch.set_grad_enabled(mode != "nograd"):
        if variant == "naive":
            logp, entropy = naive_token_scores(hidden, ids, head)
        else:
            logp, entropy = chunked_token_scores(hidden, ids, head, TEMPERATURE, with_entropy=True)
        if mode != "nograd":
            (logp.sum() + entropy.sum()).backward()
    return {
        "variant": variant,
        "mode": mode,
        "peak_mib": peak["mib"],
        "logp_sum": float(logp.sum()),
        "entropy_sum": float(entropy.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "variant,mode" measured in this process
    args = parser.parse_args()
    sizes = [args.vocab, args.hidden, args.tokens, args.dtype, args.device]
    if args.one:
        variant, mode = args.one.split(",")
        print(json.dumps(measure(variant, mode, *sizes)))
        return
    print(
        f"log-prob + entropy of {args.tokens} tokens, vocabulary {args.vocab}, hidden {args.hidden}, "
        f"{args.dtype} on {args.device}: peak memory above the inputs (MiB)"
    )
    print("| pass | naive | chunked | chunked / naive |\n|---|---:|---:|---:|", flush=True)
    ratios = {}
    for mode, name in PASSES.items():
        peaks = {}
        for variant in ("naive", "chunked"):
            command = [
                sys.executable,
                "-m",
                "benchmarks.logprob_memory",
                "--one",
                f"{variant},{mode}",
                "--vocab",
                str(args.vocab),
                "--hidden",
                str(args.hidden),
                "--tokens",
                str(args.tokens),
                "--dtype",
                args.dtype,
                "--device",
                args.device,
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            peaks[variant] = json.loads(out)["peak_mib"]
        ratios[mode] = peaks["chunked"] / peaks["naive"]
        print(f"| {name} | {peaks['naive']:.0f} | {peaks['chunked']:.0f} | {ratios[mode]:.3f} |", flush=True)
    print(f"extra_peak_ratio={max(ratios['nograd'], ratios['hidden']):.3f}")


if __name__ == "__main__":
    main()
