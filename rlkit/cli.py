"""The ``rlkit`` command: train, check, verify, objectives, plot."""

from __future__ import annotations

import argparse
import sys

from rlkit.recipe import RecipeError, load_recipe


def cmd_train(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    from rlkit.data import PromptTooLong
    from rlkit.trainer import CheckpointNotShared, Trainer, TrainingDiverged  # heavy: once the recipe is valid

    try:
        summary = Trainer(recipe).train()
    except (PromptTooLong, CheckpointNotShared) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: training stopped: {e}", file=sys.stderr)
        return 1
    print(f"held-out accuracy: {summary['eval_start']['accuracy']:.3f} at the start of RL -> "
          f"{summary['eval_end']['accuracy']:.3f} after {summary['steps']} steps "
          f"({summary['wall_seconds']:.0f} s); run in {recipe.output_dir}")
    return 0


def cmd_check(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: ok (objective {recipe.objective.get('preset', 'grpo')}, "
          f"{recipe.trainer.steps} steps, output_dir {recipe.output_dir})")
    return 0


def cmd_verify(args) -> int:
    recipe = load_recipe(args.recipe)
    from rewards.offline import verify_file

    return verify_file(recipe.rewards, args.completions, workers=args.workers)


def cmd_objectives(args) -> int:
    from rlkit.objectives import describe

    print(describe())
    return 0


def cmd_plot(args) -> int:
    from rlkit.plot import plot_runs

    try:
        print(f"wrote {plot_runs(args.runs, args.out)}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlkit", description="RL post-training for language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (("train", cmd_train, "run a recipe"),
                           ("check", cmd_check, "validate a recipe without loading a model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="a recipe YAML file")
        p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. trainer.steps=50")
        p.set_defaults(fn=fn)
    p = sub.add_parser("verify", help="score a jsonl file of completions with a recipe's verifiers")
    p.add_argument("recipe", help="a recipe YAML file")
    p.add_argument("completions", help="jsonl: 'prompt', 'completion' and the dataset columns on each line")
    p.add_argument("--workers", type=int, default=2, help="verifier processes (0: score in this process)")
    p.set_defaults(fn=cmd_verify)
    sub.add_parser("objectives", help="list objective parts and presets").set_defaults(fn=cmd_objectives)
    p = sub.add_parser("plot", help="held-out accuracy and training reward of runs against step, as a PNG")
    p.add_argument("runs", nargs="+", help="run folders (output_dir of a training run)")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.set_defaults(fn=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
