"""The old policy's log-probs from the sampler: the same numbers as the training forward, and the trainer
uses them instead of a scoring pass unless the recipe asks to recompute."""

import pytest
import torch

from rlkit.metrics import Metrics
from rlkit.models import build_char_tokenizer, build_tiny_model
from rlkit.recipe import load_recipe
from rlkit.rollout import HFEngine, RolloutBatch, Sampling, sample
from rlkit.trainer import Trainer
from rlkit.trainer.logprobs import completion_scores


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.8)])
def test_sampler_logprobs_match_the_training_forward(temperature, top_p):
    """At the sampling temperature, before top-p (the untruncated distribution the training forward gives)."""
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0).eval()
    torch.manual_seed(0)
    b = sample(
        HFEngine.on(model, tok, [tok.eos_token_id]),
        ["12+34=", "7+5=", "99+99="],
        {},
        Sampling(n=4, max_new_tokens=8, temperature=temperature, top_p=top_p),
    )
    scores = completion_scores(model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, temperature)
    on = b.completion_mask > 0
    assert b.logp.dtype == torch.float32 and (b.logp[~on] == 0).all() and (b.logp[on] < 0).all()
    # fp32, KV-cached one token at a time against one full forward: only the order of the float sums
    # differs (a few fp32 roundings, eps 1.2e-7, on logits of size ~10)
    torch.testing.assert_close(b.logp, scores.logp, rtol=0, atol=1e-5)


@pytest.mark.parametrize("source", ["sampler", "recompute"])
def test_trainer_takes_logp_old_from_the_sampler_unless_told_to_recompute(tmp_path, monkeypatch, source):
    recipe = load_recipe(
        "recipes/quickstart.yaml",
        [
            "model.warm_start=null",
            "log.trackers=[]",
            "trainer.prompts_per_step=4",
            "rollout.samples_per_prompt=2",
            "trainer.mini_batches=2",
            f"rollout.logp_old={source}",
            f"output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(recipe)
    rows = []  # rows of each scoring forward
    monkeypatch.setattr(
        trainer, "_forward", lambda model, b, **k: rows.append(b.n_rows) or Trainer._forward(trainer, model, b, **k)
    )
    rollout = trainer.rollout(1)
    rollout.rewards = torch.zeros(len(rollout))
    metrics = Metrics()
    batch = trainer.score(rollout, progress=0.0, metrics=metrics)
    assert batch.logp_behaviour is rollout.logp
    if source == "sampler":  # one group's forward, for rollout/logp_diff_*, and no scoring pass
        assert rows == [2] and batch.logp_old is rollout.logp
    else:
        assert sum(rows) == len(rollout) and batch.logp_old is not rollout.logp
        torch.testing.assert_close(batch.logp_old, rollout.logp, rtol=0, atol=1e-5)
    assert metrics.result()["rollout/logp_diff_max"] <= 1e-5


def _batch(T: int, logp_value: float | None) -> RolloutBatch:
    """One group of 2 rows with T completion tokens, sampler log-probs all ``logp_value`` (None: greedy)."""
    ones = torch.ones(2, T)
    return RolloutBatch(
        prompt_ids=torch.ones(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        completion_ids=ones.long(),
        completion_mask=ones,
        loss_mask=ones,
        group_ids=torch.tensor([0, 0]),
        truncated=torch.zeros(2, dtype=torch.bool),
        prompts=["a"] * 2,
        completions=["b"] * 2,
        columns={},
        policy_version=torch.zeros(2, dtype=torch.long),
        logp=None if logp_value is None else ones * logp_value,
    )


def test_concat_keeps_sampler_logprobs_padded_with_zeros():
    both = RolloutBatch.concat([_batch(2, -1.0), _batch(3, -2.0)], pad_token_id=0)
    assert both.logp.tolist() == [[-1, -1, 0], [-1, -1, 0], [-2, -2, -2], [-2, -2, -2]]


@pytest.mark.parametrize("order", ["greedy first", "sampled first"])
def test_concat_refuses_batches_where_only_some_have_sampler_logprobs(order):
    """Before: a greedy batch first silently dropped the others' log-probs; a greedy batch later raised AttributeError."""
    batches = [_batch(2, None), _batch(2, -1.0)]
    with pytest.raises(ValueError, match="only some have logp"):
        RolloutBatch.concat(batches if order == "greedy first" else batches[::-1], pad_token_id=0)
