"""On-policy distillation on the built-in task: ``python -m benchmarks.distill [--steps N] [--seed N] [--presets a,b] [--out DIR]``.

Evaluates the warm-started teacher of ``recipes/distill.yaml`` on the held-out set (greedy, as the
trainer evaluates the student), then trains ``opd``, ``opd_tip`` and ``opd_q3`` with
:mod:`benchmarks.presets` (each from the same warm-started student) and writes ``OUT/distill.md``:
the student's held-out score (the recipe's ``eval.metric``, exact_number: exact-match accuracy) at the
start and the end, the teacher's, and each preset's gain as a fraction of opd's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import presets as preset_runs
from rlkit.recipe import load_recipe
from rlkit.recipe.schema import ModelConfig
from rlkit.trainer import Trainer

PRESETS = ("opd", "opd_tip", "opd_q3")


def teacher_score(out: Path, seed: int | None) -> float:
    """The held-out score of the recipe's teacher, evaluated as the trainer evaluates a policy."""
    overrides = [f"output_dir={out / 'teacher'}", "log.trackers=[]"] + (
        [] if seed is None else [f"trainer.seed={seed}"]
    )
    recipe = load_recipe(preset_runs.RECIPES.parent / "distill.yaml", overrides)
    teacher = recipe.teacher
    as_policy = {
        "model": ModelConfig(path=teacher.path, dtype=teacher.dtype, warm_start=teacher.warm_start),
        "objective": {"preset": "grpo", "kl": {"beta": 0.0}},
        "teacher": None,
    }
    trainer = Trainer(recipe.model_copy(update=as_policy))  # a recipe is frozen: a variant, not an edit
    try:
        return trainer.evaluate().score
    finally:
        trainer.scorer.close()
        trainer.log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="RL steps of every run (default: the recipes' trainer.steps)")
    parser.add_argument("--seed", type=int, help="trainer.seed of every run, teacher included (default: the recipes')")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated, opd first (default: all)")
    parser.add_argument("--out", default="benchmarks/results/distill")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = teacher_score(out, args.seed)
    print(f"teacher held-out score: {teacher:.3f}", flush=True)
    presets = args.presets.split(",")
    status = preset_runs.main(
        ["--presets", args.presets, "--out", str(out)]
        + ([] if args.steps is None else ["--steps", str(args.steps)])
        + ([] if args.seed is None else ["--seed", str(args.seed)])
    )
    gains = {}
    for preset in presets:
        summary = out / preset / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            gains[preset] = (s["eval_start"]["score"], s["eval_end"]["score"])
    lines = [
        "| preset | student start | student end | teacher | gain | gain / opd's gain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = gains["opd"][1] - gains["opd"][0] if "opd" in gains else None
    for preset, (start, end) in gains.items():
        ratio = f"{(end - start) / base:.2f}" if base else "n/a"
        lines.append(f"| {preset} | {start:.3f} | {end:.3f} | {teacher:.3f} | {end - start:+.3f} | {ratio} |")
    table = "\n".join(lines)
    command = " ".join(["python -m benchmarks.distill", *(argv if argv is not None else sys.argv[1:])])
    (out / "distill.md").write_text(
        f"# On-policy distillation\n\n`{command}`\n\n{table}\n\n![learning curves](presets.png)\n"
    )
    print(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
