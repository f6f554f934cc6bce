"""The warm start: every SFTConfig field that changes the trained model is rlkit's, the stage stops on
its validation target, and its result is cached with a report."""

import json

import pytest

from rlkit.data import addition_task
from rlkit.models import builtin_tiny_path
from rlkit.recipe.schema import WarmStartConfig
from rlkit.warm_start import REPORT, AccuracyTarget, sft_config, warm_start

# The values rlkit trains with. TRL 1.16 defaults bf16 and activation checkpointing to True; if a field
# is renamed or its meaning moves in an upgrade, this fails instead of training another model silently.
EXPECTED = {
    "max_steps": 7,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-3,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "optim": "adamw_torch",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "seed": 3,
    "data_seed": 3,
    "bf16": False,
    "fp16": False,
    "activation_checkpointing": False,
    "gradient_checkpointing": False,
    "activation_offloading": False,
    "torch_compile": False,
    "use_liger_kernel": False,
    "packing": False,
    "padding_free": False,
    "completion_only_loss": True,
    "assistant_only_loss": False,
    "loss_type": "nll",
    "max_length": 1024,
    "neftune_noise_alpha": None,
    "label_smoothing_factor": 0.0,
    "dataloader_drop_last": False,
    "train_sampling_strategy": "random",
}


def test_sft_config_sets_every_field_that_changes_the_result(tmp_path):
    cfg = WarmStartConfig(max_steps=7, batch_size=16, eval_every=5).model_dump()
    args = sft_config(cfg, tmp_path, seed=3, log=False)
    assert {k: getattr(args, k) for k in EXPECTED} == EXPECTED


class Model:
    training = True

    def train(self, mode=True):
        self.training = mode

    def eval(self):
        self.training = False


class State:
    def __init__(self, step, max_steps=100):
        self.global_step, self.max_steps = step, max_steps


class Control:
    should_training_stop = False


def test_target_is_checked_every_eval_every_steps_and_stops_training(monkeypatch):
    target = AccuracyTarget.__new__(AccuracyTarget)  # the checking logic alone, with scripted accuracies
    target.every, target.target, target.log, target.history = 10, 0.25, False, []
    accuracies = iter([0.1, 0.3])
    monkeypatch.setattr(target, "accuracy", lambda model: next(accuracies))
    control = Control()
    for step in range(1, 21):
        target.on_step_end(None, State(step), control, model=Model())
        assert control.should_training_stop == (step == 20)
    assert target.history == [(10, 0.1), (20, 0.3)]


def test_without_a_target_every_step_runs_and_the_report_says_so(monkeypatch):
    target = AccuracyTarget.__new__(AccuracyTarget)
    target.every, target.target, target.log, target.history = 5, None, False, []
    monkeypatch.setattr(target, "accuracy", lambda model: 1.0)  # even a perfect score does not stop it
    control = Control()
    for step in range(1, 11):
        target.on_step_end(None, State(step, max_steps=10), control, model=Model())
        assert not control.should_training_stop
    assert target.history == [(5, 1.0), (10, 1.0)]


def test_stage_runs_to_max_steps_below_target_reports_and_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path))
    train = addition_task(seed=0, eval_size=50).train
    cfg = WarmStartConfig(max_steps=4, eval_every=2, val_size=8, batch_size=8, target_accuracy=1.0)
    out = warm_start(builtin_tiny_path(), train, cfg, seed=0, log=True)
    report = json.loads((out / REPORT).read_text())
    assert report["steps"] == 4 and not report["reached_target"]
    assert [step for step, _ in report["history"]] == [2, 4]
    assert (out / "config.json").is_file() and not (out / "trainer").exists()
    assert warm_start(builtin_tiny_path(), train, cfg, seed=0, log=True) == out
    assert "warm start: cached" in capsys.readouterr().out


def test_validation_slice_must_leave_training_rows():
    train = addition_task(seed=0, eval_size=50).train.select(range(8))
    with pytest.raises(ValueError, match="val_size"):
        warm_start(builtin_tiny_path(), train, WarmStartConfig(val_size=8), seed=0)


def test_episodes_are_validated_against_the_demonstrations_final_message(monkeypatch, shared_cache):
    """The tool task's final turn reads "Answer: 391": validation compares it with the demonstration's last
    message, not with the bare answer column (against which no episode could ever be right)."""
    from datasets import Dataset

    from rlkit.models import load_model, load_tokenizer
    from rlkit.warm_start import EpisodeTask

    monkeypatch.setenv("RLKIT_CACHE", str(shared_cache))
    path = builtin_tiny_path()
    final = {"role": "assistant", "content": "Answer: 391"}
    rows = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "17*23="}]],
            "answer": ["391"],
            "demonstration": [[{"role": "assistant", "content": "<tool_call>...</tool_call>"}, final]],
        }
    )
    task = EpisodeTask({"name": "calculator"}, max_new_tokens=8)
    target = AccuracyTarget(load_tokenizer(path), load_model(path), rows, 1, None, False, object(), task)
    assert target.answers == ["Answer: 391"]
