"""Training on episodes: bad tool calls of every kind are counted and training goes on."""

import json

from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer


def test_every_kind_of_bad_tool_call_is_counted_and_training_goes_on(tmp_path, shared_cache, monkeypatch):
    monkeypatch.setenv("RLKIT_CACHE", str(shared_cache))
    recipe = load_recipe(
        "recipes/quickstart.yaml",
        [
            "model.warm_start=null",
            "data.task=builtin:addition_chat",
            "data.eval_size=4",
            "environment={name: 'tests.environments.chaos:Chaos', max_turns: 2, max_tokens: 190, "
            "options: {tool_timeout_s: 0.2}}",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=100",  # an untrained model rarely ends a turn sooner
            "trainer.steps=2",
            "trainer.prompts_per_step=2",
            "trainer.mini_batches=1",
            "trainer.save_every=0",
            "log.every=1",
            "log.eval_every=0",
            "log.trackers=[]",
            f"output_dir={tmp_path}",
        ],
    )
    summary = Trainer(recipe).train()
    assert summary["steps"] == 2 and summary["eval_end"]["tool_use"] is not None
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "episode/tool_calls" in r]
    assert len(steps) == 2
    for r in steps:  # every finished first turn made the five bad calls; a truncated one made none
        assert r["episode/tool_calls"] == 5 * r["episode/tool_use_frac"] > 0
        for kind in ("malformed", "unknown_tool", "bad_arguments", "raised", "timeout"):
            assert r[f"episode/tool_errors/{kind}"] == r["episode/tool_use_frac"], kind
    sample = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in sample["episode"]][:2] == ["assistant", "tool"] or len(sample["episode"]) == 1
