"""Multi-turn episodes under ZeRO-3 on 2 CPU processes: rank 0's episodes end after one turn while rank 1's
run three. With ``synced_gpus`` every decoding step is a collective, so rank 0 must join rank 1's later
generate calls; if it stopped on its own, rank 1 would wait for it forever (the launch's timeout)."""

import json

import pytest

from rlkit.models import build_char_tokenizer, build_tiny_model
from tests.rollout.test_episodes import ending_early
from tests.trainer.launching import launch

pytestmark = pytest.mark.slow  # a two-process launch


def test_ranks_with_unequal_turns_train_under_zero3(tmp_path):
    tok = build_char_tokenizer()
    model = build_tiny_model(tok).eval()
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": f"{a}*{a + 3}="}], tokenize=False) for a in (12, 47)
    ]
    ending_early(model, tok, prompts, logit=6.0)  # turns end after a few tokens, as episodes need
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    result = launch(
        "zero3",
        [
            "-m",
            "rlkit.cli",
            "train",
            "recipes/tool_use.yaml",
            f"model.path={tmp_path / 'model'}",
            "model.warm_start=null",
            "environment.name=tests.environments.rank_turns:RankTurns",
            "trainer.steps=2",
            "trainer.prompts_per_step=4",
            "rollout.samples_per_prompt=2",
            "trainer.lr=1e-5",
            "data.eval_size=8",
            "log.eval_every=0",
            "log.every=1",
            "trainer.save_every=0",
            "log.trackers=[]",
            f"output_dir={tmp_path / 'run'}",
        ],
        tmp_path / "cache",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    turns = [m["episode/turns"] for m in steps if "episode/turns" in m]
    assert turns == [2.0, 2.0]  # the mean over both ranks' episodes: 1 turn each on rank 0, 3 on rank 1
