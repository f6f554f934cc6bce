"""ZeRO-3 on 2 CPU processes (launch/zero3.yaml): held-out evaluation with shards of unequal size."""

import json
import os
import subprocess
import sys

from tests.trainer.launching import ROOT, launch


def test_evaluation_with_unequal_shards_matches_one_process(tmp_path):
    """7 prompts in generate calls of 3: shards of 4 and 3 rows. Unpadded, rank 0 would call generate
    twice and rank 1 once, and rank 0 would wait for rank 1 forever (synced_gpus); the launch's timeout
    catches that. Both evaluations score the same completions of the same weights, so accuracy
    (a count of 0/1 scores over 7) is equal exactly; it is neither 0 nor 1, so a counted padding row
    (row 0, scored again) would change it."""
    one = subprocess.run([sys.executable, "tests/trainer/eval_shards.py", "--out", str(tmp_path / "one.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RLKIT_CACHE": str(tmp_path / "cache")})
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("zero3", ["tests/trainer/eval_shards.py", "--out", str(tmp_path / "two.json")], tmp_path / "cache",
                 29611, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert one["calls"] == [3] and two["calls"] == [2, 2]
    assert 0 < one["accuracy"] < 1
    assert two["accuracy"] == one["accuracy"] and two["reward"] == one["reward"]
