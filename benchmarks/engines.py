"""Rollout throughput of the ``hf`` and ``vllm`` engines on the ``vs_trl`` sizes:
``python -m benchmarks.engines [--sizes quickstart,large] [--repeats 5]`` (in the vLLM virtualenv).

Each size's start checkpoint and prompts are ``benchmarks.vs_trl``'s (the quickstart's warm-started tiny
model, 32 prompts x 8 samples x 5 tokens; a random 10.5M-parameter Llama, 8 x 8 x 64 tokens), sampled at
T = 1 in fp32. Each engine generates the rollout batch once to warm up, then ``repeats`` times; reported:
completion tokens per second (tokens up to and including EOS, over the timed calls), and the median
seconds per batch. One process, the machine's threads (2 cores here). The last line is
``SIZE_hf_tokens_per_s=... SIZE_vllm_tokens_per_s=...`` for each size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.vs_trl import SIZES, G, prompt_rows, start_checkpoint
from rlkit.data import tokenize_prompts
from rlkit.models import eos_token_ids, load_model, load_tokenizer
from rlkit.rollout import EngineSetup, Sampling, build_engine
from rlkit.rollout.hf import HFEngine


def measure(engine, prompt_ids: list[list[int]], sampling: Sampling, repeats: int) -> dict:
    engine.generate(prompt_ids, sampling)  # warm-up (vLLM's first batch compiles and allocates)
    seconds, tokens = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        out = engine.generate(prompt_ids, sampling)
        seconds.append(time.perf_counter() - t)
        tokens += int(out.mask.sum())
    return {"tokens_per_s": tokens / sum(seconds), "s_per_batch": statistics.median(seconds)}


def run_size(size: str, repeats: int, workdir: Path) -> dict[str, dict]:
    spec = SIZES[size]
    path = start_checkpoint(size, workdir)
    tokenizer = load_tokenizer(path)
    model = load_model(path, "float32", torch.device("cpu")).eval()
    eos = eos_token_ids(tokenizer, model)
    prompt_ids = tokenize_prompts(list(prompt_rows(spec["prompts"])["prompt"]), tokenizer)
    sampling = Sampling(n=G, max_new_tokens=spec["max_new_tokens"])
    results = {"hf": measure(HFEngine.on(model, tokenizer, eos), prompt_ids, sampling, repeats)}
    setup = EngineSetup(
        model_path=str(path),
        tokenizer=tokenizer,
        eos_token_ids=eos,
        dtype="float32",
        device=torch.device("cpu"),
        seed=0,
        max_model_len=128,
    )
    vllm = build_engine({"type": "vllm"}, setup)
    try:
        results["vllm"] = measure(vllm, prompt_ids, sampling, repeats)
    finally:
        vllm.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="quickstart,large")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    print("| size | engine | completion tokens/s | s per rollout batch |\n|---|---|---:|---:|")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            results = run_size(size, args.repeats, Path(tmp))
            for engine, r in results.items():
                print(f"| {size} | {engine} | {r['tokens_per_s']:.0f} | {r['s_per_batch']:.3f} |")
                summary.append(f"{size}_{engine}_tokens_per_s={r['tokens_per_s']:.0f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
