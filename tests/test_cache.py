"""Cache folders are published whole: a half-written built-in model (what a non-zero rank once left
behind) and the temporary folder of a killed build are rebuilt and removed, not used; two processes
building the same warm start at once both get the complete folder."""

import json
import multiprocessing
import os
import socket
import subprocess

import torch
from transformers import AutoModelForCausalLM

import rlkit.warm_start
from rlkit.cache import MARKER, cache_dir
from rlkit.data import addition_task
from rlkit.models import build_char_tokenizer, build_tiny_model, builtin_tiny_path
from rlkit.recipe.schema import WarmStartConfig
from rlkit.warm_start import REPORT, warm_start


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()  # reaped: no process has this id now
    return process.pid


def test_half_written_model_and_dead_build_are_rebuilt_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path))
    models = tmp_path / "models"
    half = models / "tiny-llama-char-v2"
    build_char_tokenizer().save_pretrained(half)  # all that save_pretrained wrote on global rank 1
    prefix = f"tiny-llama-char-v2.tmp-{socket.gethostname()}-"
    killed, running = models / f"{prefix}{dead_pid()}", models / f"{prefix}{os.getppid()}"
    for leftover in (killed, running):
        leftover.mkdir()
        (leftover / "config.json").write_text("{}")

    path = builtin_tiny_path()

    assert path == half and (path / MARKER).is_file()
    expected = build_tiny_model(build_char_tokenizer())  # seeded: the same weights in any process
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), expected.state_dict().values()))
    assert not killed.exists()
    assert running.exists()  # a build still running on this host is left alone


def fake_stage(barrier):
    """Stands in for the supervised child process: waits until both builders are inside their builds."""

    def run_alone(module_args):
        barrier.wait(timeout=60)
        tmp = module_args[2]
        report = {"steps": 1, "validation_accuracy": 0.0, "reached_target": False, "history": [[1, 0.0]]}
        with open(os.path.join(tmp, REPORT), "w") as f:
            json.dump(report, f)

    return run_alone


def build_warm_start(train, cfg, results):
    results.put(str(warm_start(builtin_tiny_path(), train, cfg, seed=0, log=False)))


def test_two_processes_building_one_warm_start_at_once_do_not_race(tmp_path, monkeypatch):
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path))
    builtin_tiny_path()  # the start model both use (its folder's identity is part of the warm start key)
    fork = multiprocessing.get_context("fork")  # the children inherit the patched stage
    monkeypatch.setattr(rlkit.warm_start, "run_alone", fake_stage(fork.Barrier(2)))
    train, cfg, results = addition_task(seed=0, eval_size=50).train, WarmStartConfig(val_size=8), fork.Queue()
    ranks = [fork.Process(target=build_warm_start, args=(train, cfg, results)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=120)
    assert [rank.exitcode for rank in ranks] == [0, 0]  # the rename that lost raised "Directory not empty"
    out = {results.get(timeout=1) for _ in ranks}
    assert len(out) == 1
    folder = cache_dir() / "warm_start"
    assert [p.name for p in folder.iterdir()] == [os.path.basename(out.pop())]  # no temporary copy left
    assert sorted(p.name for p in next(folder.iterdir()).iterdir()) == [MARKER, REPORT]  # data/ removed
