"""Starting rlkit under `accelerate launch` with two CPU processes, as the tests need it."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from transformers import AutoModelForCausalLM

from tests.ports import free_port

ROOT = Path(__file__).parents[2]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
LAUNCHERS = {
    # `--cpu --num_processes 2` silently starts one process (docs/architecture.md); this form starts two (gloo)
    "ddp": [
        ACCELERATE,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
    "zero2": [
        ACCELERATE,
        "launch",
        "--config_file",
        "launch/zero2.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
    ],
    "zero3": [
        ACCELERATE,
        "launch",
        "--config_file",
        "launch/zero3.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
    ],
    "zero3_offload": [
        ACCELERATE,
        "launch",
        "--config_file",
        "launch/zero3_offload.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
    ],
}


def launch(launcher: str, args: list[str], cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python args...`` on two processes with ``launcher`` (a key of LAUNCHERS) from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # it turns DeepSpeed into DDP
    env["RLKIT_CACHE"] = str(cache)
    # DeepSpeed's JIT-compiled ops, once per virtual environment: a build for another environment's
    # include paths in the shared default (~/.cache/torch_extensions) makes the next launch rebuild them
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if launcher == "ddp":
        env["ACCELERATE_USE_CPU"] = "true"
    with subprocess.Popen(
        [*LAUNCHERS[launcher], "--main_process_port", str(free_port()), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)  # a hung run: its workers too, or they would hang on for the rest of the suite
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def kill_tree(pid: int) -> None:
    """Kill a process and every process it started (torch elastic starts each worker in a session of its own,
    so a process group does not reach them)."""
    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def model_at(output_dir, step: int):
    return AutoModelForCausalLM.from_pretrained(output_dir / "checkpoints" / f"step-{step:06d}" / "model")


def max_difference(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def launch_nodes(args: list[list[str]], envs: list[dict], timeout: int) -> list[subprocess.CompletedProcess]:
    """Two simulated nodes, one process each: ``python args[r]...`` on node r with the extra environment
    ``envs[r]`` (its RLKIT_CACHE; ACCELERATE_USE_CPU=true on a CPU, its GPU on a GPU machine), both started
    at once. A node still running after ``timeout`` seconds fails the test (a hang) and both are killed."""
    port, nodes, logs = free_port(), [], [tempfile.TemporaryFile("w+") for _ in args]  # noqa: SIM115 (closed below); files: a full pipe would block a node
    for rank, (node_args, env, log) in enumerate(zip(args, envs, logs)):
        command = [
            ACCELERATE,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        nodes.append(
            subprocess.Popen(
                [*command, *node_args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    try:
        for node in nodes:
            node.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.terminate()  # the launcher passes it on to its worker (torch elastic)
        for node in nodes:
            node.wait(timeout=60)
        raise AssertionError(f"two-node run still running after {timeout} s: hung") from None
    for log in logs:
        log.seek(0)
    return [subprocess.CompletedProcess(node.args, node.returncode, log.read()) for node, log in zip(nodes, logs)]
