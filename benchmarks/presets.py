"""Objective presets compared: ``python -m benchmarks.presets [--steps N] [--seed N] [--presets a,b,...] [--out DIR]``.

Trains ``recipes/presets/<preset>.yaml`` for each preset, one after another, each as its own ``rlkit train``
process into ``OUT/<preset>`` (a run already there is deleted first, so that every run starts fresh). Then
writes ``OUT/presets.md`` (the held-out metric, its score at the start and at the end of RL, and wall time,
from each run's summary.json) and ``OUT/presets.png`` (learning curves, :mod:`rlkit.plot`), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from rlkit.objectives.presets import PRESETS
from rlkit.plot import plot_runs

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "presets"
HEADER = "| preset | held-out metric | at start | at end | change | wall s |\n|---|---|---:|---:|---:|---:|"


def train(preset: str, steps: int | None, seed: int | None, run_dir: Path) -> int:
    """Run the preset's recipe with ``rlkit train`` into ``run_dir`` (for ``steps``, with ``seed``, if given);
    its exit status."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "rlkit.cli", "train", str(RECIPES / f"{preset}.yaml"), f"output_dir={run_dir}"]
    if steps is not None:
        command.append(f"trainer.steps={steps}")
    if seed is not None:
        command.append(f"trainer.seed={seed}")
    print(f"== {preset}: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command).returncode


def table_row(preset: str, run_dir: Path) -> str:
    """The preset's line of the table, from its run's summary.json."""
    summary = json.loads((run_dir / "summary.json").read_text())
    start, end = summary["eval_start"], summary["eval_end"]
    change = end["score"] - start["score"]
    return (
        f"| {preset} | {end['metric']} (k={end['k']}) | {start['score']:.3f} | {end['score']:.3f} | {change:+.3f} "
        f"| {summary['wall_seconds']:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="RL steps of every run (default: the recipes' trainer.steps)")
    parser.add_argument("--seed", type=int, help="trainer.seed of every run (default: the recipes')")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated (default: all)")
    parser.add_argument("--out", default="benchmarks/results/presets", help="runs, table and plot go here")
    args = parser.parse_args(argv)
    presets = args.presets.split(",")
    missing = [p for p in presets if not (RECIPES / f"{p}.yaml").is_file()]
    if missing:
        parser.error(f"no recipe for {missing} in {RECIPES}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows, finished = [], []
    for preset in presets:
        status = train(preset, args.steps, args.seed, out / preset)
        if status:
            rows.append(f"| {preset} | failed (exit {status}) | | | | |")
        else:
            rows.append(table_row(preset, out / preset))
            finished.append(out / preset)
    table = "\n".join([HEADER, *rows])
    command = " ".join(["python -m benchmarks.presets", *(argv if argv is not None else sys.argv[1:])])
    (out / "presets.md").write_text(
        f"# Objective presets\n\n`{command}`: recipes/presets/<preset>.yaml, the held-out metric "
        f"(eval.metric, logged as eval/score) at the start and at the end of RL.\n\n{table}\n\n"
        "![learning curves](presets.png)\n"
    )
    if finished:
        plot_runs(finished, out / "presets.png")
    print(table)
    return 1 if len(finished) < len(presets) else 0


if __name__ == "__main__":
    sys.exit(main())
