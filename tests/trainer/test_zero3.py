"""ZeRO-3 on 2 CPU processes (launch/zero3.yaml): held-out evaluation with shards of unequal size, the
distillation teacher partitioned like the policy, and checkpoints that resume."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.trainer.launching import ROOT, launch, max_difference, model_at

pytestmark = pytest.mark.slow  # two-process launches

# on-policy distillation from the built-in teacher, both models untrained (quick to build; the student's
# and the teacher's distributions differ, so the reverse KL has a gradient); 2 steps, a checkpoint after each
LR = 2e-3  # the tolerances below are fractions of it
OPD = [
    "recipes/presets/opd.yaml",
    "model.warm_start=null",
    "teacher.warm_start=null",
    "trainer.steps=2",
    "trainer.save_every=1",
    "trainer.prompts_per_step=8",
    "data.eval_size=8",
    "log.eval_every=0",
    "log.trackers=[]",
    f"trainer.lr={LR}",
]


def test_evaluation_with_unequal_shards_matches_one_process(tmp_path, shared_cache):
    """7 prompts in generate calls of 3: shards of 4 and 3 rows. Unpadded, rank 0 would call generate
    twice and rank 1 once, and rank 0 would wait for rank 1 forever (synced_gpus); the launch's timeout
    catches that. Both evaluations score the same completions of the same weights, so the score
    (a count of 0/1 scores over 7) is equal exactly; it is neither 0 nor 1, so a counted padding row
    (row 0, scored again) would change it. The same holds for k = 3 samples per prompt (pass@3, mean@3):
    each prompt's samples are seeded by the prompt, not by the rank or the call it falls in."""
    one = subprocess.run(
        [sys.executable, "tests/trainer/eval_shards.py", "--out", str(tmp_path / "one.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RLKIT_CACHE": str(shared_cache)},
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(
        "zero3",
        ["tests/trainer/eval_shards.py", "--out", str(tmp_path / "two.json")],
        shared_cache,
        timeout=300,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    for k in ("greedy", "sampled"):  # sampled: seeded per prompt, so the split over ranks changes nothing
        assert one[k]["calls"] == [3] and two[k]["calls"] == [2, 2]
        assert 0 < one[k]["score"] < 1 and one[k] == {**two[k], "calls": [3]}
    assert 0 < one["sampled"]["pass_at_k"] < 1


def run(launcher: str, script: list[str], overrides: list[str], output_dir, cache):
    result = launch(launcher, [*script, *OPD, *overrides, f"output_dir={output_dir}"], cache)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def opd_zero3(tmp_path_factory, cache):
    """2 steps under ZeRO-3, in micro-batches of 4 rows (2 per rank and step), through a script that
    records the models' partitions first."""
    return run(
        "zero3",
        ["tests/trainer/partitions.py"],
        ["trainer.micro_batch_size=4"],
        tmp_path_factory.mktemp("zero3"),
        cache,
    )


def test_teacher_is_partitioned_under_zero3(opd_zero3):
    """After setup each rank holds half of the teacher's elements, as it does of the policy's (every
    parameter has an even number of elements, so the partitions need no padding)."""
    partitions = json.loads((opd_zero3 / "partitions.json").read_text())
    # tied embedding 100 x h, per layer 4 h^2 (attention) + 3 h 4h (MLP) + 2 h (norms), final norm h
    assert partitions["teacher"]["full"] == 100 * 256 + 6 * (4 * 256**2 + 12 * 256**2 + 2 * 256) + 256  # 6,320,384
    assert partitions["model"]["full"] == 100 * 128 + 4 * (4 * 128**2 + 12 * 128**2 + 2 * 128) + 128  # 1,062,528
    for name in ("model", "teacher"):
        assert partitions[name]["held"] == [partitions[name]["full"] // 2] * 2, name


def test_distillation_under_zero3_equals_ddp(opd_zero3, cache, tmp_path):
    """The same two steps under DDP, in one micro-batch: the same weights after each step, within lr / 20
    (test_deepspeed.py's ratio). Micro-batches of 4 and 64 rows are packed differently, so fp32 sums run in
    another order, and Adam's first step lr * g / (|g| + eps) turns that noise into a small fraction of lr
    where |g| is near eps; a wrong gradient moves elements by up to 2 x lr. The ZeRO-3 run built the cached
    models and the DDP run found them built, so this also checks that a run from an empty cache
    samples as one from a full cache (an in-process build once reseeded rank 0's global RNG, and
    ~10% of the weights then differed by 2 x lr after one step)."""
    ddp = run("ddp", ["-m", "rlkit.cli", "train"], ["trainer.micro_batch_size=64"], tmp_path, cache)
    for step in (1, 2):
        assert max_difference(model_at(ddp, step), model_at(opd_zero3, step)) < LR / 20
    assert max_difference(model_at(ddp, 2), model_at(ddp, 1)) > 1e-4  # the second step moved the weights


def test_zero3_run_resumed_from_step_1_equals_the_uninterrupted_run(opd_zero3, cache, tmp_path):
    """A run stopped after its step-1 checkpoint (that checkpoint alone, copied to a fresh output
    directory) resumes from its sharded state to step 2, with the same weights as the run that went
    on: same prompts, sampling RNG, optimizer moments and step count, so equal to fp32 rounding."""
    shutil.copytree(opd_zero3 / "checkpoints" / "step-000001", tmp_path / "checkpoints" / "step-000001")
    run("zero3", ["-m", "rlkit.cli", "train"], ["trainer.micro_batch_size=4"], tmp_path, cache)
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == 1
    assert max_difference(model_at(tmp_path, 2), model_at(opd_zero3, 2)) < 1e-6
