"""Peak memory of one distillation update, all tokens vs TIP: ``python -m benchmarks.distill_memory``.

Options: ``[--vocab 32768] [--rows 4] [--tokens 512] [--presets opd,opd_tip,opd_q3] [--device cpu|cuda]
[--out DIR]`` (``DIR/distill_memory.md`` and a bar chart ``DIR/distill_memory.png``).

A random student (Llama, hidden 256, 2 layers) and teacher (hidden 512, 2 layers) with a large vocabulary;
``rows`` completions of ``tokens`` tokens after a 16-token prompt. Each preset runs in a fresh process:
the no-grad scoring pass (one row at a time, as the trainer's chunks), ``objective.prepare``, then one
micro-batch of every row through the trainer's own path (``completion_scores`` with the active tokens
packed, the teacher's logits for the same positions, ``Objective.loss``, backward). Reported: the peak
memory of that update above the memory held before it: ``torch.cuda.max_memory_allocated`` on a GPU,
the growth of the process's peak resident set (``ru_maxrss``) on a CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.peak_memory import peak_above_start
from rlkit.metrics import Metrics
from rlkit.objectives import StepBatch, build_objective
from rlkit.trainer.logprobs import completion_scores

PROMPT = 16


def model(vocab: int, hidden: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(config)


def measure(preset: str, vocab: int, rows: int, tokens: int, device: str) -> dict:
    """One update of ``preset``; its peak memory above the memory held before the update, in MiB."""
    student, teacher = model(vocab, 256, 0).to(device), model(vocab, 512, 1).to(device).requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(vocab, (rows, PROMPT), generator=gen).to(device)
    completion_ids = torch.randint(vocab, (rows, tokens), generator=gen).to(device)
    ones = lambda n: torch.ones(rows, n, dtype=torch.long, device=device)  # noqa: E731
    batch = StepBatch(
        mask=ones(tokens).float(),
        advantages=torch.zeros(rows, device=device),
        group_ids=torch.zeros(rows, dtype=torch.long, device=device),
        prompt_ids=prompt_ids,
        prompt_mask=ones(PROMPT),
        completion_ids=completion_ids,
    )
    objective = build_objective({"preset": preset})

    def forward(m, b, **kw):
        return completion_scores(m, b.prompt_ids, b.prompt_mask, b.completion_ids, b.mask, 1.0, **kw)

    extras = []
    with torch.no_grad():  # the scoring pass, one row at a time
        for i in range(rows):
            row = batch.rows(slice(i, i + 1))
            if "logits" in objective.needs:
                s, t = forward(student, row, with_logits=True), forward(teacher, row, with_logits=True)
                extras.append(
                    objective.on_logits(s.logits, row.completion_ids, row.mask, row.group_ids, teacher_logits=t.logits)
                )
    batch.extras = {k: torch.cat([e[k] for e in extras]) for k in extras[0]} if extras and extras[0] else {}
    metrics = Metrics()
    weights = objective.prepare(batch, metrics)
    with peak_above_start(device) as peak:
        positions = objective.active_tokens(batch, weights)
        s = forward(student, batch, with_logits=True, positions=positions)
        t = forward(teacher, batch, with_logits=True, positions=positions)
        loss = objective.loss(s.logp, batch, weights, metrics, logits=s.logits, teacher_logits=t.logits)
        loss.backward()
    return {
        "preset": preset,
        "kept_token_frac": float(positions.float().mean()),
        "peak_mib": peak["mib"],
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--presets", default="opd,opd_tip,opd_q3")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write distill_memory.md and distill_memory.png here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this preset in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.vocab, args.rows, args.tokens, args.device)))
        return
    title = (
        f"one distillation update: {args.rows} rows x {args.tokens} tokens, vocabulary {args.vocab}, "
        f"device {args.device}"
    )
    lines = ["| preset | kept tokens | peak memory of the update (MiB) |", "|---|---:|---:|"]
    print(title, *lines, sep="\n", flush=True)
    results = []
    for preset in args.presets.split(","):
        command = [
            sys.executable,
            "-m",
            "benchmarks.distill_memory",
            "--one",
            preset,
            "--vocab",
            str(args.vocab),
            "--rows",
            str(args.rows),
            "--tokens",
            str(args.tokens),
            "--device",
            args.device,
        ]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        results.append(result)
        lines.append(f"| {preset} | {result['kept_token_frac']:.2f} | {result['peak_mib']:.0f} |")
        print(lines[-1], flush=True)
    if args.out:
        write(Path(args.out), title, lines, results)


def write(out: Path, title: str, lines: list[str], results: list[dict]) -> None:
    """The table as Markdown and the peaks as a bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.distill_memory", *sys.argv[1:]])
    (out / "distill_memory.md").write_text(
        f"`{command}`: {title}\n\n" + "\n".join(lines) + "\n\n![peak memory](distill_memory.png)\n"
    )
    fig, ax = plt.subplots(figsize=(5, 3))
    names = [f"{r['preset']}\n({r['kept_token_frac']:.0%} of tokens)" for r in results]
    ax.bar(names, [r["peak_mib"] for r in results], color="tab:blue")
    ax.set_ylabel("peak memory of the update (MiB)")
    ax.set_title(title.split(": ")[1], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "distill_memory.png", dpi=120)


if __name__ == "__main__":
    main()
