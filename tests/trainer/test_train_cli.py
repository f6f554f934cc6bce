"""End to end through the CLI: records, checkpoints that load with plain transformers, the cached warm
start, and resuming an interrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow  # runs through the CLI, the first training the warm start

ROOT = Path(__file__).parents[2]
SMALL = [
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "data.eval_size=16",
    "model.warm_start.max_steps=10",
    "model.warm_start.batch_size=16",
    "log.samples=1",
    "objective.kl.beta=0.04",
]  # the reference model and the KL metric, end to end


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "RLKIT_CACHE": str(tmp_path_factory.mktemp("cache"))}


def train_command(output_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "rlkit.cli",
        "train",
        "recipes/quickstart.yaml",
        f"output_dir={output_dir}",
        *SMALL,
        *overrides,
    ]


def train(env, output_dir, *overrides) -> str:
    result = subprocess.run(
        train_command(output_dir, *overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


RUN = ("trainer.steps=6", "trainer.save_every=2", "trainer.keep_checkpoints=2", "log.every=2", "log.eval_every=2")


@pytest.fixture(scope="module")
def run(env, tmp_path_factory):
    """A 6-step run from an empty cache: it trains the warm start, which the module's other runs find."""
    out = tmp_path_factory.mktemp("run")
    return out, train(env, out, *RUN)


def test_run_writes_summary_metrics_samples_and_tensorboard(run):
    out, log = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from"] is None and summary["wall_seconds"] > 0
    for key in ("eval_start", "eval_end"):
        assert summary[key]["metric"] == "exact_number" and 0 <= summary[key]["score"] <= 1
    metrics = read_jsonl(out / "metrics.jsonl")
    train_lines = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in train_lines] == [2, 4, 6]
    for key in ("objective/kl", "objective/clip_frac_low", "rollout/len_mean", "train/grad_norm", "train/lr"):
        assert key in train_lines[-1], key
    assert [m["step"] for m in metrics if "eval/score" in m] == [0, 2, 4, 6]
    samples = read_jsonl(out / "samples.jsonl")
    assert {s["step"] for s in samples} == {2, 4, 6} and all("completion" in s and "reward" in s for s in samples)
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"
    assert "held-out exact_number" in log and "at the start of RL" in log


def test_checkpoint_loads_with_plain_transformers(run):
    out, _ = run
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000004", "step-000006"]  # keep_checkpoints=2 pruned step 2
    model = AutoModelForCausalLM.from_pretrained(checkpoints[0] / "model")
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[0] / "model")
    ids = tokenizer("12+34=", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_interrupted_run_resumes_from_its_last_checkpoint(env, run, tmp_path):
    """The first run is killed (SIGKILL) in step 3, right after its step-2 checkpoint was written (its
    kill switch, a verifier, fires at step 3's scoring); the same command then resumes from step 2. Both
    find the warm start that the module's first run trained in the cache."""
    kill_switch = "{verifier: tests/trainer/kill_switch.py:dies_once_file_exists, weight: 0.0}"
    args = (
        "trainer.steps=4",
        "trainer.save_every=2",
        "log.every=1",
        "log.eval_every=0",
        "log.trackers=[]",
        f"rewards=[{{verifier: exact_number}}, {kill_switch}]",
    )
    checkpoint_2 = tmp_path / "checkpoints" / "step-000002" / "trainer_state.json"
    first = subprocess.run(
        train_command(tmp_path, *args),
        cwd=ROOT,
        env={**env, "KILL_SWITCH_FILE": str(checkpoint_2)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:] + first.stderr[-3000:]
    assert [c.name for c in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    log = train(env, tmp_path, *args)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["resumed_from"], summary["steps"]) == (2, 4)
    assert f"resumed from {checkpoint_2.parent} (step 2)" in log and "warm start: cached" in log
    steps = [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl") if "reward/mean" in m]
    assert steps == [1, 2, 3, 4]


def test_a_checkpoint_whose_trainer_state_is_truncated_is_skipped_on_resume(env, run, tmp_path):
    """The module's run, its last checkpoint's trainer state cut short (what a run killed while writing it
    in place left), resumes from the checkpoint before it."""
    shutil.copytree(run[0], tmp_path, dirs_exist_ok=True)
    latest = tmp_path / "checkpoints" / "step-000006"
    state = latest / "trainer_state.json"
    state.write_text(state.read_text()[:20])
    log = train(env, tmp_path, *RUN)
    assert f"warning: skipping checkpoint {latest}: trainer_state.json is unreadable (" in log
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["resumed_from"], summary["steps"]) == (4, 6)
    assert json.loads(state.read_text())["step"] == 6  # saved again, whole
    steps = [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl") if "reward/mean" in m]
    assert steps == [2, 4, 6]
