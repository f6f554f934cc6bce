"""The trainer's house rules: the recipe is frozen once the run starts, and ``kl_in_reward`` takes the
rollout-time log-probs from the scoring pass (no logits of its own, no forward of its own)."""

import pytest
import torch
from pydantic import ValidationError

from rewards.scoring import Scores
from rlkit.metrics import Metrics
from rlkit.objectives import Need
from rlkit.recipe import load_recipe
from rlkit.trainer import Trainer

BETA, TEMPERATURE = 0.5, 0.7


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """On-policy (one update per step) Dr. GRPO with the KL in the reward: 3 prompts x 2 samples, scored
    in chunks of 2 rows (whole groups), so the scoring pass runs 3 policy and 3 reference forwards."""
    overrides = [
        f"output_dir={tmp_path_factory.mktemp('house') / 'run'}",
        "model.warm_start=null",
        "log.trackers=[]",
        "trainer.prompts_per_step=3",
        "trainer.mini_batches=1",
        "trainer.micro_batch_size=2",
        "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=4",
        f"rollout.temperature={TEMPERATURE}",
        f"objective={{preset: dr_grpo, kl: {{type: kl_in_reward, beta: {BETA}}}}}",
    ]
    return Trainer(load_recipe("recipes/quickstart.yaml", overrides))


def counting_forwards(module: torch.nn.Module) -> list[int]:
    """A one-element list holding the number of forwards ``module`` ran since the call."""
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def plain_logp(model: torch.nn.Module, rollout, row: int) -> torch.Tensor:
    """log softmax(logits / temperature) of row ``row``'s completion tokens [T] from one unpacked forward of
    its prompt (padding removed) and completion: the computation ``kl_in_reward`` made before from logits."""
    prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
    completion = rollout.completion_ids[row]
    with torch.no_grad():
        logits = model(torch.cat([prompt, completion])[None]).logits[0].double() / TEMPERATURE
    scoring = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
    return (scoring.gather(-1, completion[:, None]).squeeze(-1) - scoring.logsumexp(-1)).float()


def test_kl_in_reward_uses_the_scoring_pass_and_no_forward_of_its_own(trainer):
    objective = trainer.objective
    assert Need.LOGP_TRAINER in objective.needs and Need.LOGITS not in objective.needs
    policy = trainer.accelerator.unwrap_model(trainer.model)
    reference = trainer.reference.model
    assert reference is not policy
    rollout = trainer.rollout(1)
    rollout.rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0], device=rollout.group_ids.device)
    n_chunks = len(trainer._group_chunks(len(rollout)))
    assert n_chunks == 3
    policy_calls, reference_calls = counting_forwards(policy), counting_forwards(reference)
    batch = trainer.score(rollout, progress=0.0, metrics=Metrics())
    assert (policy_calls[0], reference_calls[0]) == (n_chunks, n_chunks)  # one forward per chunk, each model
    assert batch.extras == {} and batch.logp_old is None  # on-policy: nothing else was computed

    mask = batch.mask
    expected = torch.stack([plain_logp(policy, rollout, i) for i in range(len(rollout))])
    expected_ref = torch.stack([plain_logp(reference, rollout, i) for i in range(len(rollout))])
    torch.testing.assert_close(batch.logp_trainer * mask, expected * mask, rtol=0, atol=2e-5)
    torch.testing.assert_close(batch.logp_ref * mask, expected_ref * mask, rtol=0, atol=2e-5)
    # k1 summed over the completion: R - beta * sum_t (logp - logp_ref); Dr. GRPO advantage = R - group mean
    penalised = rollout.rewards - BETA * ((expected - expected_ref) * mask).sum(-1)
    group_means = penalised.view(3, 2).mean(-1).repeat_interleave(2)
    advantages = objective.advantages(rollout.rewards, batch)
    torch.testing.assert_close(advantages, penalised - group_means, rtol=0, atol=5e-5)
    assert advantages.abs().sum() > 0


class MutatingScorer:
    """A verifier that tries to change the run's options in the middle of a step."""

    def __init__(self, trainer, change):
        self.trainer, self.change = trainer, change

    def __call__(self, prompts, completions, columns):
        self.change(self.trainer.recipe)
        return Scores(total=[0.0] * len(prompts), per_verifier={}, metrics={})


@pytest.mark.parametrize(
    "change",
    [
        lambda recipe: setattr(recipe.trainer, "lr", 0.0),
        lambda recipe: setattr(recipe.rollout, "temperature", 2.0),
        lambda recipe: setattr(recipe, "output_dir", "elsewhere"),
    ],
    ids=["trainer.lr", "rollout.temperature", "output_dir"],
)
def test_changing_the_recipe_during_a_run_raises(trainer, change):
    before = trainer.recipe.model_dump()
    scorer, trainer.scorer = trainer.scorer, MutatingScorer(trainer, change)
    try:
        with pytest.raises(ValidationError, match="frozen"):
            trainer.step(1)
    finally:
        trainer.scorer = scorer
    assert trainer.recipe.model_dump() == before
