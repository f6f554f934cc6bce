"""Starting rlkit under `accelerate launch` with two CPU processes, as the tests need it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

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
}


def launch(launcher: str, args: list[str], cache: Path, port: int, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python args...`` on two processes with ``launcher`` (a key of LAUNCHERS) from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # it turns DeepSpeed into DDP
    env["RLKIT_CACHE"] = str(cache)
    if launcher == "ddp":
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.run([*LAUNCHERS[launcher], "--main_process_port", str(port), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def launch_nodes(args: list[list[str]], caches: list[Path], port: int, timeout: int) -> list[subprocess.CompletedProcess]:
    """Two simulated nodes, one CPU process each: ``python args[r]...`` with ``RLKIT_CACHE=caches[r]``
    on node r, both started at once. A node still running after ``timeout`` seconds fails the test
    (a hang) and both are killed."""
    nodes = []
    for rank, (node_args, cache) in enumerate(zip(args, caches)):
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "RLKIT_CACHE": str(cache)}
        command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "2",
                   "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                   "--mixed_precision", "no", "--dynamo_backend", "no"]
        nodes.append(subprocess.Popen([*command, *node_args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            os.killpg(node.pid, signal.SIGKILL)  # the launcher and its worker
        raise AssertionError(f"two-node run still running after {timeout} s: hung") from None
    return [subprocess.CompletedProcess(node.args, node.returncode, output) for node, output in zip(nodes, outputs)]
