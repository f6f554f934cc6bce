"""Starting rlkit under `accelerate launch` with two CPU processes, as the tests need it."""

import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

ROOT = Path(__file__).parents[2]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
LAUNCHERS = {
    # `--cpu --num_processes 2` silently starts one process (docs/architecture.md); this form starts two (gloo)
    "ddp": [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"],
    "zero2": [ACCELERATE, "launch", "--config_file", "launch/zero2.yaml", "--num_processes", "2",
              "--mixed_precision", "no"],
    "zero3": [ACCELERATE, "launch", "--config_file", "launch/zero3.yaml", "--num_processes", "2",
              "--mixed_precision", "no"],
    "zero3_offload": [ACCELERATE, "launch", "--config_file", "launch/zero3_offload.yaml", "--num_processes", "2",
                      "--mixed_precision", "no"],
}


def launch(launcher: str, args: list[str], cache: Path, port: int, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python args...`` on two processes with ``launcher`` (a key of LAUNCHERS) from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # it turns DeepSpeed into DDP
    env["RLKIT_CACHE"] = str(cache)
    # DeepSpeed's JIT-compiled ops, once per virtual environment: a build for another environment's
    # include paths in the shared default (~/.cache/torch_extensions) makes the next launch rebuild them
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if launcher == "ddp":
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.run([*LAUNCHERS[launcher], "--main_process_port", str(port), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def model_at(output_dir, step: int):
    return AutoModelForCausalLM.from_pretrained(output_dir / "checkpoints" / f"step-{step:06d}" / "model")


def max_difference(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))
