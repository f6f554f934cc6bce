"""A rank that dies (SIGKILL) or stalls (SIGSTOP) mid-run ends the whole job with a clear error, and leaves
no process behind (2 CPU processes, gloo, through `rlkit launch ddp`). The tests check the events that end
the job (the survivor's own error, naming the cause); their timeouts only guard against a hang.

- Killed: the others' next collective fails at once (gloo sees the dead rank's sockets close) with a
  clean error, and torchrun's agent sees the worker exit within its monitor interval (0.1 s) and
  terminates the others (SIGTERM), so the job ends in seconds.
- Stopped: the stalled rank never exits. The others wait in their next collective until the process
  group's timeout (trainer.collective_timeout_s; gloo honours it) and exit with an error. The agent then
  sends SIGTERM to all, which a stopped process only receives when continued, and SIGKILL 30 s later
  (on this path torch 2.13's agent calls ``_shutdown()`` with its default; TORCH_ELASTIC_SHUTDOWN_TIMEOUT
  is not read). The bound is the sum of the two.
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlkit.distributed import collective_timed_out, peer_lost
from rlkit.models import builtin_tiny_path
from tests.ports import free_port

ROOT = Path(__file__).parents[2]
RLKIT = str(Path(sys.executable).parent / "rlkit")
TIMEOUT_S = 10  # collective timeout: short for the test, well above a tiny step's ~1 s on a loaded machine
SHUTDOWN_S = 30  # torchrun's grace between SIGTERM and SIGKILL when a worker failed
HANG_S = TIMEOUT_S + SHUTDOWN_S + 120  # a hang guard only: the jobs end in ~1 s (killed) and ~45 s (stopped)


def start(tmp_path: Path, cache: Path) -> subprocess.Popen:
    out = tmp_path / "run"
    command = [
        RLKIT,
        "launch",
        "ddp",
        "recipes/quickstart.yaml",
        "model.warm_start=null",
        "log.trackers=[]",
        "trainer.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "data.eval_size=8",
        "log.eval_every=0",
        "log.every=1",
        "trainer.steps=100000",
        f"trainer.collective_timeout_s={TIMEOUT_S}",
        f"output_dir={out}",
        "--main_process_port",
        str(free_port()),
    ]
    env = {**os.environ, "RLKIT_CACHE": str(cache)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=(tmp_path / "stdout").open("w"), stderr=(tmp_path / "stderr").open("w")
    )


def wait_for_training(job: subprocess.Popen, tmp_path: Path) -> None:
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if metrics.exists() and any("train/lr" in json.loads(line) for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.5)
    pytest.fail(f"no training step (exit {job.poll()}): {(tmp_path / 'stderr').read_text()[-3000:]}")


def rank(workers: list[psutil.Process], index: int) -> psutil.Process:
    return next(w for w in workers if w.environ().get("RANK") == str(index))


@pytest.fixture
def start_job(tmp_path, shared_cache, monkeypatch):
    """Starts the job and returns it with its two ranks once it trains; afterwards, whatever happened,
    no process of it is left (stopped ones are continued, then killed). The built-in model is built in the
    cache first: rank 1 waits for rank 0's build in a collective, which on a busy machine can outlast the
    short collective timeout."""
    monkeypatch.setenv("RLKIT_CACHE", str(shared_cache))
    builtin_tiny_path()
    processes = []

    def start_job() -> tuple[subprocess.Popen, list[psutil.Process]]:
        job = start(tmp_path, shared_cache)
        processes.append(psutil.Process(job.pid))
        wait_for_training(job, tmp_path)
        workers = [p for p in processes[0].children(recursive=True) if "rlkit.cli" in p.cmdline()]
        processes.extend(workers)
        assert len(workers) == 2
        return job, workers

    yield start_job
    for p in processes:
        if p.is_running():
            p.send_signal(signal.SIGCONT)
            p.kill()
    psutil.wait_procs(processes, timeout=30)


def wait_for_end(job: subprocess.Popen, workers: list[psutil.Process]) -> None:
    """The job ends, failing, with none of its ranks left."""
    job.wait(timeout=HANG_S)
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"left behind: {alive}"
    assert job.returncode != 0


@pytest.mark.slow
def test_killed_rank_ends_the_job(start_job, tmp_path):
    job, workers = start_job()
    rank(workers, 1).kill()
    wait_for_end(job, workers)
    stderr = (tmp_path / "stderr").read_text()
    assert "rank      : 1" in stderr and "Signal 9 (SIGKILL) received by PID" in stderr
    # rank 0's next collective fails within milliseconds of the kill, before the agent's SIGTERM
    assert "error: another rank died: a collective lost its connection to it" in stderr, [
        line for line in stderr.splitlines() if "rror" in line
    ]
    assert "[rank0]: Traceback" not in stderr


@pytest.mark.slow
def test_stopped_rank_ends_the_job_after_the_collective_timeout(start_job, tmp_path):
    job, workers = start_job()
    rank(workers, 1).suspend()  # SIGSTOP
    wait_for_end(job, workers)
    stderr = (tmp_path / "stderr").read_text()
    assert (
        f"error: a collective waited longer than trainer.collective_timeout_s={TIMEOUT_S} s: another rank "
        "died or stalled"
    ) in stderr, [line for line in stderr.splitlines() if "rror" in line]


def record_collective_errors(out: str) -> None:
    """Run four collectives at once and one more, write each one's error text to ``out``, and exit."""
    errors = []
    for work in [dist.all_reduce(torch.ones(4), async_op=True) for _ in range(4)]:
        try:
            work.wait()
        except RuntimeError as e:
            errors.append(str(e))
    try:
        dist.all_reduce(torch.ones(4))
    except RuntimeError as e:
        errors.append(str(e))
    Path(out).write_text(json.dumps(errors))
    os._exit(0)


def stalled_collectives(rank: int, port: int, out: str) -> None:
    """Rank 0 runs collectives that rank 1 never joins: four at once (as DDP's gradient buckets are), then
    one more, and records each error's text; rank 1 stays silent until rank 0 is done. Both leave with
    ``os._exit``, as rlkit's ranks do: destroying a group whose pairs gloo closed can abort."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=2)
    )
    if rank == 1:
        while not Path(out).exists():
            time.sleep(0.1)
        os._exit(0)
    record_collective_errors(out)


def test_every_error_of_a_gloo_timeout_is_recognised(tmp_path):
    """The collective that times out and those beside or after it fail with different words; whichever
    reaches the trainer first, the run ends with the timeout's message (a DDP backward can surface the
    second kind)."""
    out = tmp_path / "errors.json"
    mp.spawn(stalled_collectives, args=(free_port(), str(out)), nprocs=2, join=True)
    errors = json.loads(out.read_text())
    assert len(errors) == 5
    assert any("Timed out waiting 2000ms" in e for e in errors)
    assert any(e == "Application timeout caused pair closure" for e in errors)
    assert all(collective_timed_out(RuntimeError(e)) and not peer_lost(RuntimeError(e)) for e in errors), errors


def killed_peer(rank: int, port: int, out: str) -> None:
    """Rank 1 is killed (SIGKILL) after one collective; rank 0 then runs four at once and one more, and
    records each error's text."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    dist.all_reduce(torch.ones(4))
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    record_collective_errors(out)


def test_every_error_of_a_killed_peer_is_recognised(tmp_path):
    """What the survivors of a killed rank see: a lost connection, not a timeout."""
    out = tmp_path / "errors.json"
    ranks = mp.spawn(killed_peer, args=(free_port(), str(out)), nprocs=2, join=False)
    for process in ranks.processes:
        process.join(timeout=60)
    errors = json.loads(out.read_text())
    assert len(errors) == 5
    assert all(peer_lost(RuntimeError(e)) and not collective_timed_out(RuntimeError(e)) for e in errors), errors
