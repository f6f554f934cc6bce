"""The ``rlkit`` command: train, launch, check, verify, export, objectives, plot."""

from __future__ import annotations

import argparse
import os
import sys

from rlkit.recipe import RecipeError, load_recipe


def cmd_train(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides, make_output_dir=True)
    from rlkit.data import PromptTooLong
    from rlkit.distributed import collective_timed_out, peer_lost
    from rlkit.trainer import CheckpointNotShared, Trainer, TrainingDiverged  # heavy: once the recipe is valid
    from rlkit.trainer.evaluation import EvalResult
    from rlkit.trainer.startup import LaunchRefused

    try:
        trainer = Trainer(recipe)
        summary = trainer.train()
    except (PromptTooLong, LaunchRefused, CheckpointNotShared) as e:
        return _leave(2, f"error: {e}")
    except TrainingDiverged as e:
        return _leave(1, f"error: training stopped: {e}")
    except RuntimeError as e:
        if peer_lost(e):
            return _leave(
                1,
                f"error: another rank died: a collective lost its connection to it (the launcher's "
                f"report names the rank; {e})",
            )
        if not collective_timed_out(e):
            raise
        return _leave(
            1,
            f"error: a collective waited longer than trainer.collective_timeout_s="
            f"{recipe.trainer.collective_timeout_s:g} s: another rank died or stalled ({e})",
        )
    return _leave(
        0,
        f"held-out {EvalResult(**summary['eval_start']).describe()} at the start of RL -> "
        f"{EvalResult(**summary['eval_end']).describe()} after {summary['steps']} steps "
        f"({summary['wall_seconds']:.0f} s); run in {recipe.output_dir}",
    )


def _leave(code: int, message: str) -> int:
    """Print the run's outcome; a launched rank then exits at once, with the trainer still referenced.

    By then the run is saved, its trackers finished and its process group destroyed. What is left is
    freeing the objects that hold the group (DDP's reducer, DeepSpeed's engine), and that is unsafe: the
    group's destructor joins gloo worker threads while holding the GIL, and a worker that is releasing a
    tensor owned by Python waits for the GIL, so the rank hangs (seen when both nodes refused a
    checkpoint), or, during interpreter finalization, aborts with "terminate called without an active
    exception" (pytorch/pytorch#190489), and torchrun reports a finished run as failed.
    """
    print(message, file=sys.stderr if code else sys.stdout)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_launch(args) -> int:
    from rlkit.launcher import LaunchError, accelerate_command, exec_launch, resolve_config

    recipe = load_recipe(args.recipe, args.overrides)  # a bad recipe fails here, not in N processes
    import torch

    layout = {
        k: getattr(args, k)
        for k in ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")
    }
    try:
        command, env = accelerate_command(
            resolve_config(args.config),
            [args.recipe, *args.overrides],
            recipe.trainer.mixed_precision,
            torch.cuda.device_count(),
            layout,
            args.accelerate_flags,
            dict(os.environ),
        )
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return exec_launch(command, env)


def cmd_check(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(
        f"{args.recipe}: ok (objective {recipe.objective.get('preset', 'grpo')}, "
        f"{recipe.trainer.steps} steps, held-out {recipe.eval.metric}"
        f"{f' pass@{recipe.eval.k}' if recipe.eval.k > 1 else ''}, output_dir {recipe.output_dir})"
    )
    return 0


def cmd_verify(args) -> int:
    recipe = load_recipe(args.recipe)
    from rewards.offline import verify_file

    return verify_file(recipe.rewards, args.completions, workers=args.workers)


def cmd_export(args) -> int:
    from rlkit.trainer.checkpoint import export_merged

    out = args.out or f"{args.run}/merged"
    try:
        checkpoint = export_merged(args.run, out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: the adapter of {checkpoint} merged into its base model")
    return 0


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
    for name, fn, text in (
        ("train", cmd_train, "run a recipe"),
        ("check", cmd_check, "validate a recipe without loading a model"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="a recipe YAML file")
        p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. trainer.steps=50")
        p.set_defaults(fn=fn)
    p = sub.add_parser(
        "launch",
        help="run a recipe on several processes or machines (accelerate launch)",
        description="accelerate launch with a config from launch/; extra accelerate flags after --",
    )
    p.add_argument(
        "config",
        help="ddp, zero2, zero3, zero3_offload, fsdp2, multinode_zero3 (launch/NAME.yaml), "
        "or an accelerate config file",
    )
    p.add_argument("recipe", help="a recipe YAML file")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. trainer.steps=50")
    p.add_argument(
        "--num_processes",
        type=int,
        help="over all machines (default: one per GPU, or 2 on a machine without CUDA, times the machines)",
    )
    p.add_argument("--num_machines", type=int, help="default: the config's")
    p.add_argument("--machine_rank", type=int, help="this machine's rank (several machines)")
    p.add_argument("--main_process_ip", help="the rank-0 machine's address (several machines)")
    p.add_argument("--main_process_port", type=int, help="default: the config's, or 29500")
    p.set_defaults(fn=cmd_launch)
    p = sub.add_parser("verify", help="score a jsonl file of completions with a recipe's verifiers")
    p.add_argument("recipe", help="a recipe YAML file")
    p.add_argument("completions", help="jsonl: 'prompt', 'completion' and the dataset columns on each line")
    p.add_argument("--workers", type=int, default=2, help="verifier processes (0: score in this process)")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("export", help="merge a LoRA run's latest adapter into its base model: a plain model folder")
    p.add_argument("run", help="the run folder (output_dir of a training run with model.lora)")
    p.add_argument("--out", help="the folder to write (default: RUN/merged)")
    p.set_defaults(fn=cmd_export)
    sub.add_parser("objectives", help="list objective parts and presets").set_defaults(fn=cmd_objectives)
    p = sub.add_parser("plot", help="held-out metric and training reward of runs against step, as a PNG")
    p.add_argument("runs", nargs="+", help="run folders (output_dir of a training run)")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.set_defaults(fn=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # `rlkit launch ... -- FLAGS`: FLAGS go to accelerate
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    args.accelerate_flags = argv[cut + 1 :]
    if args.accelerate_flags and args.command != "launch":
        parser.error(f"flags after -- are for rlkit launch, not rlkit {args.command}")
    try:
        return args.fn(args)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
