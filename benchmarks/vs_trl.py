"""rlkit against TRL's GRPOTrainer on identical work: ``python -m benchmarks.vs_trl [--size large]``.

Options: ``[--size quickstart|large] [--rounds 3] [--cycles 4] [--systems rlkit,trl_fast,...] [--core 0]``.

Identical work for every system:

- weights: ``quickstart``, the quickstart's warm-started builtin:tiny (1.06M parameters, rlkit's cached warm
  start, minutes on first use); ``large``, a randomly initialised Llama with the same tokenizer, hidden 256,
  10 layers (10.5M parameters): its completions mostly run to the token limit (long completions, short prompts);
- prompts: the built-in addition task's, in the order rlkit draws them (TRL gets them as its dataset, unshuffled);
- per rollout batch ("cycle"): P prompts x G = 8 samples, then 2 optimizer steps of P/2 prompts each
  (TRL: ``per_device_train_batch_size`` = 8P/2, ``steps_per_generation`` 2, so it also computes the old
  log-probs in a scoring pass); P = 32 (quickstart) or 8 (large);
- sampling at temperature 1, top-p 1, no top-k, at most 5 (quickstart) or 64 (large) new tokens;
- the loss: group z-score advantages, PPO clip 0.2, token mean over the optimizer step, no KL (TRL's
  defaults ``loss_type="dapo"``, ``beta=0``; rlkit ``grpo`` with ``token_mean`` aggregation, KL off);
  AdamW at 2e-4 (large: 1e-6), constant, gradient clipping at 1, one forward/backward of the whole optimizer step;
- reward: rlkit's ``exact_number`` verifier; at the large size plus DAPO's overlong penalty (``overlong``) with
  L_max = L_cache = 64, i.e. -|y|/64: the untrained model answers nothing right, and groups whose rewards are
  all equal have zero advantages, whose rows rlkit does not run (less work, but not the comparison this size
  is for); with the length term nearly every group has signal. The learning rate there is 1e-6, so that the
  completions keep their length over the timed cycles (at 2e-4 they halve within one).

Systems (all by default):

- ``rlkit``, fp32; ``rlkit_bf16``, ``trainer.mixed_precision=bf16`` (autocast, fp32 weights). On a CPU rlkit
  loads models with eager attention (:func:`rlkit.models.attention_for`);
- ``trl_fast``, TRL in fp32 without activation checkpointing; ``trl_bf16``, bf16 autocast without it;
  ``trl_bf16_eager``, the same with the model loaded with eager attention, as rlkit does on a CPU;
  ``trl_default``, TRL's defaults (bf16 autocast, activation checkpointing). TRL's model otherwise loads
  with transformers' default attention (SDPA).

Each system runs in its own process, pinned to one core with one torch thread, ``rounds`` times in turn (so
slow drift of the machine hits all of them alike). A process runs one warm-up cycle, then ``cycles`` timed
ones. Reported per system: the median over all timed cycles of the seconds per optimizer step (cycle time
/ 2), completion tokens per second, and the peak resident set (``ru_maxrss``, the largest over rounds). For
rlkit also its update's FLOPs and rate against this core's dense matmul rate in the update's precision
(:func:`update_rate`, one more cycle after the timed ones). The last line is ``step_time_ratio=X
peak_rss_ratio=Y``: rlkit's fastest system over TRL's fastest (by step time), both named on the line before.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
G = 8
SIZES = {  # prompts per rollout batch, max new tokens, model (None: the quickstart's warm-started tiny),
    # DAPO's overlong penalty (max_length, cache_length) added to the reward, or None; learning rate
    "quickstart": {"prompts": 32, "max_new_tokens": 5, "model": None, "overlong": None, "lr": 2e-4},
    "large": {
        "prompts": 8,
        "max_new_tokens": 64,
        "model": {"hidden": 256, "layers": 10},
        "overlong": (64, 64),
        "lr": 1e-6,
    },
}
SEED = 0
RLKIT_SYSTEMS = {"rlkit": [], "rlkit_bf16": ["trainer.mixed_precision=bf16"]}  # recipe overrides


@dataclass(frozen=True)
class TRLSettings:
    config: dict  # GRPOConfig fields over TRL's defaults
    attention: str = "sdpa"  # the model's attn_implementation (transformers' default: sdpa)


TRL_SYSTEMS = {
    "trl_fast": TRLSettings({"bf16": False, "gradient_checkpointing": False}),
    "trl_bf16": TRLSettings({"bf16": True, "gradient_checkpointing": False}),
    "trl_bf16_eager": TRLSettings({"bf16": True, "gradient_checkpointing": False}, attention="eager"),
    "trl_default": TRLSettings({}),
}


def start_checkpoint(size: str, workdir: Path) -> Path:
    """The weights every system starts from (warm-started, cached, or built once, in this process)."""
    from rlkit.data import load_task
    from rlkit.models import build_char_tokenizer, build_tiny_model, builtin_tiny_path
    from rlkit.recipe import load_recipe
    from rlkit.warm_start import warm_start

    spec = SIZES[size]["model"]
    if spec is None:
        recipe = load_recipe(ROOT / "recipes/quickstart.yaml", [f"output_dir={workdir}", f"trainer.seed={SEED}"])
        data = load_task(recipe.data, SEED)
        return warm_start(builtin_tiny_path(), data.train, recipe.model.warm_start, SEED)
    path = workdir / f"model-{size}"
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, seed=SEED, hidden=spec["hidden"], layers=spec["layers"]).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_rows(n: int):
    """The first ``n`` training prompts in the order rlkit's trainer draws them (seed 0, first epoch)."""
    import numpy as np

    from rlkit.data import load_task
    from rlkit.recipe.schema import DataConfig

    train = load_task(DataConfig(task="builtin:addition", eval_size=200), SEED).train
    return train.select([int(i) for i in np.random.default_rng([SEED, 0]).permutation(len(train))[:n]])


def rewards_spec(size: str) -> str:
    """rlkit's ``rewards`` for ``size`` (YAML flow), the same terms as :func:`run_trl`'s reward function."""
    spec = "[{verifier: exact_number, weight: 1.0}"
    if SIZES[size]["overlong"]:
        max_length, cache_length = SIZES[size]["overlong"]
        spec += (
            f", {{verifier: overlong, weight: 1.0, kwargs: {{max_length: {max_length}, cache_length: {cache_length}}}}}"
        )
    return spec + "]"


def run_rlkit(
    model: Path, size: str, cycles: int, workdir: Path, overrides: list[str]
) -> tuple[list[float], list[int], object]:
    from rlkit.recipe import load_recipe
    from rlkit.trainer import Trainer

    spec = SIZES[size]
    recipe = load_recipe(
        ROOT / "recipes/quickstart.yaml",
        [
            f"model.path={model}",
            "model.warm_start=null",
            f"trainer.prompts_per_step={spec['prompts']}",
            "trainer.mini_batches=2",
            f"trainer.micro_batch_size={spec['prompts'] * G // 2}",
            f"trainer.lr={spec['lr']}",
            f"rollout.max_new_tokens={spec['max_new_tokens']}",
            "objective={preset: grpo, kl: {beta: 0.0}, aggregation: {type: token_mean}}",
            f"trainer.seed={SEED}",
            "log.trackers=[]",
            f"trainer.steps={cycles + 1}",
            f"output_dir={workdir / 'rlkit'}",
            f"rewards={rewards_spec(size)}",
            *overrides,
        ],
    )
    trainer = Trainer(recipe)
    times, tokens = [], []
    for step in range(1, cycles + 2):
        t = time.perf_counter()
        metrics, _ = trainer.step(step)
        times.append(time.perf_counter() - t)
        tokens.append(round(metrics["rollout/len_mean"] * spec["prompts"] * G))
    return times[1:], tokens[1:], trainer


def update_rate(trainer, step: int) -> dict:
    """One more cycle, untimed above, whose update (forward and backward of both optimizer steps) runs under
    torch's FLOP counter (matmuls and attention): its GFLOP and GFLOP/s. The counter's own overhead is in
    the time, so the rate is a lower bound. Compared with :func:`matmul_rate` at the update's largest shape,
    in the update's precision."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter, update, seconds = FlopCounterMode(display=False), trainer.update, []

    def counted(*args):
        t = time.perf_counter()
        with counter:
            update(*args)
        seconds.append(time.perf_counter() - t)

    trainer.update = counted
    trainer.step(step)
    trainer.update = update
    config = trainer.accelerator.unwrap_model(trainer.model).config
    gflop = counter.get_total_flops() / 1e9
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}[trainer.recipe.trainer.mixed_precision]
    return {
        "update_gflop": gflop,
        "update_gflop_per_s": gflop / seconds[0],
        "matmul_gflop_per_s": matmul_rate(config.hidden_size, config.intermediate_size, dtype),
    }


def matmul_rate(hidden: int, intermediate: int, dtype, rows: int = 4096, repeats: int = 20) -> float:
    """This core's dense matmul rate (GFLOP/s) in ``dtype`` at the MLP's shape, [rows,hidden] @ [hidden,intermediate]."""
    import torch

    a, b = torch.randn(rows, hidden, dtype=dtype), torch.randn(hidden, intermediate, dtype=dtype)
    a @ b  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * hidden * intermediate * repeats / (time.perf_counter() - t) / 1e9


def run_trl(model: Path, size: str, cycles: int, workdir: Path, settings: TRLSettings) -> tuple[list[float], list[int]]:
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.exact import exact_number
    from rewards.shaping import overlong
    from rlkit.models import load_tokenizer

    spec = SIZES[size]
    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        seed=SEED,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        max_steps=2 * (cycles + 1),
        shuffle_dataset=False,
        per_device_train_batch_size=spec["prompts"] * G // 2,
        steps_per_generation=2,
        num_generations=G,
        gradient_accumulation_steps=1,
        max_completion_length=spec["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        **settings.config,
    )
    ends: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    def reward(prompts, completions, completion_ids, answer, **_):
        tokens.append(sum(len(c) for c in completion_ids))
        total = exact_number(prompts, completions, answer)
        if spec["overlong"]:  # TRL's completion_ids end at the EOS, included, as rlkit's completion_tokens
            total = [
                r + p
                for r, p in zip(
                    total,
                    overlong(
                        prompts, completions, *spec["overlong"], completion_tokens=[len(c) for c in completion_ids]
                    ),
                )
            ]
        return total

    policy = AutoModelForCausalLM.from_pretrained(model, attn_implementation=settings.attention)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=reward,
        args=config,
        train_dataset=prompt_rows(spec["prompts"] * (cycles + 1)),
        processing_class=load_tokenizer(model),
        callbacks=[Clock()],
    )
    start = time.perf_counter()
    trainer.train()
    cycle_ends = [start, *ends[1::2]]  # a rollout batch is generated at every other optimizer step
    return [b - a for a, b in zip(cycle_ends, cycle_ends[1:])][1:], tokens[1:]


def one(system: str, model: Path, size: str, cycles: int, core: int) -> dict:
    """Run ``system`` in this process; its cycle times, completion tokens and peak resident set."""
    import torch

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        if system in RLKIT_SYSTEMS:
            times, tokens, trainer = run_rlkit(model, size, cycles, Path(workdir), RLKIT_SYSTEMS[system])
        else:
            times, tokens, trainer = *run_trl(model, size, cycles, Path(workdir), TRL_SYSTEMS[system]), None
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the FLOP-counted cycle
        rate = update_rate(trainer, cycles + 2) if trainer else {}
    return {"system": system, "cycle_s": times, "tokens": tokens, "peak_rss_mib": peak_rss_mib, **rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="quickstart", choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--systems", default=",".join([*RLKIT_SYSTEMS, *TRL_SYSTEMS]))
    parser.add_argument("--core", type=int, default=0, help="the core each system's process is pinned to")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this system in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, Path(args.model), args.size, args.cycles, args.core)))
        return
    systems = args.systems.split(",")
    with tempfile.TemporaryDirectory() as workdir:
        model = start_checkpoint(args.size, Path(workdir))
        results: dict[str, list[dict]] = {s: [] for s in systems}
        for r in range(args.rounds):
            for system in systems:
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.vs_trl",
                    "--one",
                    system,
                    "--model",
                    str(model),
                    "--size",
                    args.size,
                    "--cycles",
                    str(args.cycles),
                    "--core",
                    str(args.core),
                ]
                out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    sys.exit(f"{system} failed:\n{out.stderr[-3000:]}")
                results[system].append(json.loads(out.stdout.splitlines()[-1]))
                print(f"round {r + 1}/{args.rounds}: {system} done", file=sys.stderr, flush=True)
    spec = SIZES[args.size]
    print(
        f"size {args.size}: {spec['prompts']} prompts x G={G} per rollout batch, 2 optimizer steps each, at most "
        f"{spec['max_new_tokens']} new tokens; {args.rounds} rounds x {args.cycles} timed rollout batches; "
        f"one core, one thread per system"
    )
    print("| system | s / optimizer step (median) | completion tokens / s | peak RSS (MiB) |\n|---|---:|---:|---:|")
    summary = {}
    for system, runs in results.items():
        cycles = [t for run in runs for t in run["cycle_s"]]
        tokens = [n for run in runs for n in run["tokens"]]
        step_s = statistics.median(cycles) / 2
        summary[system] = (step_s, max(run["peak_rss_mib"] for run in runs))
        print(f"| {system} | {step_s:.3f} | {sum(tokens) / sum(cycles):.0f} | {summary[system][1]:.0f} |")
    for system in [s for s in results if s in RLKIT_SYSTEMS]:
        rates = {
            k: statistics.median(run[k] for run in results[system])
            for k in ("update_gflop", "update_gflop_per_s", "matmul_gflop_per_s")
        }
        print(
            f"{system}'s update (forward + backward of a rollout batch's 2 optimizer steps): "
            f"{rates['update_gflop']:.1f} GFLOP at >= {rates['update_gflop_per_s']:.1f} GFLOP/s, "
            f"{rates['update_gflop_per_s'] / rates['matmul_gflop_per_s']:.0%} of this core's dense matmul "
            f"rate in its precision at the model's MLP shape ({rates['matmul_gflop_per_s']:.1f} GFLOP/s; "
            f"medians over rounds)"
        )
    rlkit = min((s for s in summary if s in RLKIT_SYSTEMS), key=lambda s: summary[s][0], default=None)
    trl = min((s for s in summary if s in TRL_SYSTEMS), key=lambda s: summary[s][0], default=None)
    if rlkit and trl:
        (rl_s, rl_rss), (trl_s, trl_rss) = summary[rlkit], summary[trl]
        print(f"fastest of each: {rlkit} over {trl}")
        print(f"step_time_ratio={rl_s / trl_s:.3f} peak_rss_ratio={rl_rss / trl_rss:.3f}")


if __name__ == "__main__":
    main()
