"""The warm start: a short supervised stage (TRL's SFTTrainer) before RL, stopped on an accuracy target.

RL needs a policy that is sometimes right: from a random model every group's rewards are equal and
every advantage is zero. How far the supervised stage should go is measured, not counted in steps: it
stops at the first check where greedy exact-match accuracy on a *validation* slice of the training
prompts (kept out of the supervised data, and apart from the held-out evaluation set) reaches
``target_accuracy``. A fixed step count put the start model anywhere between 0.05 and 0.6 accuracy
depending on the library version and the data order; the target makes the start of RL the same
whatever the seed. A target of ``null`` runs all ``max_steps``: for a task whose greedy accuracy cannot
show what the stage taught (the tool-use task's model learns to read the calculator's result, but answers
directly when greedy, so its validation accuracy stays near 0 by design).

Two further choices, both measured on the built-in task: the learning rate is constant and the stage
simply stops (a model annealed to LR 0 at a similar accuracy sat where policy-gradient noise outweighed
the reward signal, and RL *lowered* its held-out accuracy: 0.23 -> 0.15 and 0.59 -> 0.52); and every
SFTConfig field that changes the result is set here (TRL 1.16 turned on bf16 and activation
checkpointing by default, which made this stage 17x slower on a CPU and trained a different model).

The result is saved under ``$RLKIT_CACHE/warm_start/<hash>``, where the hash covers everything that
changes it (start model, data, settings, seed, library versions); a second run loads it. It is
published whole or not at all, as every cache folder (``rlkit/cache.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
import trl
from datasets import Dataset, load_from_disk
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from rlkit.cache import cache_dir, cached_folder, is_complete, run_alone
from rlkit.data import tokenize_prompts
from rlkit.environments.spec import EnvironmentSpec
from rlkit.models import eos_token_ids, load_model, load_tokenizer
from rlkit.recipe.schema import EnvironmentConfig
from rlkit.rollout import HFEngine, Sampling, episode_ids, run_episodes, sample

CACHE_VERSION = 2  # bump when this stage's recipe changes
REPORT = "warm_start.json"  # steps run and validation accuracy, saved beside the weights


def warm_start(
    model_path: Path, train: Dataset, cfg, seed: int, log: bool = True, episodes: EpisodeTask | None = None
) -> Path:
    """The cached result of fine-tuning ``model_path`` on ``train`` (columns prompt, answer; and demonstration,
    an episode's messages after the prompt, for a multi-turn task).

    The first ``cfg.val_size`` rows of ``train`` are the validation slice; the rest is trained on. With
    ``episodes`` (a multi-turn task), validation runs whole episodes in its environment and compares the
    final turn with the answer, and the ``demonstration`` column is trained on, laid out as rollouts lay
    out episodes (:func:`rlkit.rollout.episode_ids`), the loss on the model's turns only.
    On a miss the stage runs in a plain child process (``run_alone``), whatever the launch (DDP,
    DeepSpeed), so the same settings give the same weights. Concurrent calls are safe; the trainer
    makes one process per node build it (``local_main_process_first``) while the others wait.
    """
    key = json.dumps(
        {
            "v": CACHE_VERSION,
            "model": _fingerprint(model_path),
            "data": train._fingerprint,
            "cfg": cfg.model_dump(),
            "seed": seed,
            "episodes": None if episodes is None else asdict(episodes),
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        sort_keys=True,
    )
    out = cache_dir() / "warm_start" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if is_complete(out):
        if log:
            print(f"warm start: cached, {out} ({_describe(out)})")
        return out
    if "answer" not in train.column_names:
        raise ValueError("model.warm_start needs an 'answer' column in the training data")
    if len(train) <= cfg.val_size:
        raise ValueError(f"model.warm_start.val_size ({cfg.val_size}) leaves no training rows ({len(train)} in all)")
    if log:
        until = "" if cfg.target_accuracy is None else f" until validation accuracy >= {cfg.target_accuracy}, at most"
        print(f"warm start: supervised steps{until} {cfg.max_steps} -> {out}")

    def build(tmp: Path) -> None:
        train.save_to_disk(tmp / "data")
        task = json.dumps(None if episodes is None else asdict(episodes))
        run_alone(
            ["rlkit.warm_start", str(model_path), str(tmp), cfg.model_dump_json(), str(seed), str(int(log)), task]
        )
        shutil.rmtree(tmp / "data")

    cached_folder(out, build)
    if log:
        print(f"warm start: {_describe(out)}")
    return out


def sft_config(cfg: dict, output_dir: Path, seed: int, log: bool) -> SFTConfig:
    """TRL's SFTConfig with every field that changes the trained model set explicitly (not inherited
    from the installed TRL/transformers defaults, which moved between releases)."""
    # transformers renamed gradient_checkpointing in 5.20; vLLM's virtualenv pins an earlier release
    checkpointing = (
        "activation_checkpointing"
        if "activation_checkpointing" in SFTConfig.__dataclass_fields__
        else "gradient_checkpointing"
    )
    no_checkpointing: dict[str, Any] = {checkpointing: False}  # a field name chosen at run time
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=cfg["lr"],
        lr_scheduler_type=cfg["lr_schedule"],
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        seed=seed,
        data_seed=seed,
        # precision and memory: plain fp32 training, no recomputation (TRL 1.16 defaults: bf16, checkpointing)
        bf16=False,
        fp16=False,
        **no_checkpointing,
        activation_offloading=False,
        torch_compile=False,
        use_liger_kernel=False,
        # what the loss sees: prompt-completion pairs, loss on the completion (the answer + EOS) only
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        assistant_only_loss=False,
        loss_type="nll",
        max_length=1024,
        neftune_noise_alpha=None,
        label_smoothing_factor=0.0,
        dataloader_drop_last=False,
        train_sampling_strategy="random",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg["eval_every"],
        disable_tqdm=True,
        log_level="warning" if log else "error",
    )


@dataclass(frozen=True)
class EpisodeTask:
    """What the warm start of a multi-turn task needs to run its validation episodes."""

    environment: dict  # the recipe's environment section (EnvironmentConfig, dumped)
    max_new_tokens: int  # rollout.max_new_tokens: the longest model turn


class AccuracyTarget(TrainerCallback):
    """Every ``every`` steps: greedy exact-match accuracy on the validation rows (of the final turn of whole
    episodes, for a multi-turn task); stop at ``target``.

    Completions come from the ``hf`` engine's greedy path (same prompt tokens, same EOS ids, the same
    episode loop), so RL starts where this measured."""

    def __init__(self, tokenizer, model, validation: Dataset, every: int, target: float | None, log: bool, env, task):
        # an episode's final turn is its demonstration's last message ("Answer: 2146"), not the bare answer
        finals = [d[-1]["content"] for d in validation["demonstration"]] if env else validation["answer"]
        self.answers = [str(a).strip() for a in finals]
        longest = max(len(tokenizer(a, add_special_tokens=False).input_ids) for a in self.answers)
        self.tokenizer, self.eos_token_ids = tokenizer, eos_token_ids(tokenizer, model)
        self.sampling = Sampling(n=1, max_new_tokens=task.max_new_tokens if task else longest + 2, greedy=True)
        self.prompts = list(validation["prompt"])
        self.columns = {c: list(validation[c]) for c in validation.column_names if c != "prompt"}
        self.env = env
        self.every, self.target, self.log = every, target, log
        self.history: list[tuple[int, float]] = []

    def accuracy(self, model) -> float:
        was_training = model.training
        model.eval()
        engine = HFEngine.on(model, self.tokenizer, self.eos_token_ids)
        if self.env is None:
            out = sample(engine, self.prompts, {}, self.sampling)
        else:
            out = run_episodes(engine, self.env, self.prompts, self.columns, self.sampling)
        model.train(was_training)
        return sum(c.strip() == a for c, a in zip(out.completions, self.answers)) / len(self.answers)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            accuracy = self.accuracy(model)
            self.history.append((state.global_step, accuracy))
            if self.log:
                print(f"warm start: step {state.global_step}, validation accuracy {accuracy:.3f}", flush=True)
            control.should_training_stop = self.target is not None and accuracy >= self.target
        return control


def supervised_stage(model_path: str, out: Path, cfg: dict, seed: int, log: bool, task: EpisodeTask | None) -> None:
    """TRL's SFTTrainer on ``out/data`` until the validation target; saves model, tokenizer and report."""
    tokenizer, model = load_tokenizer(model_path), load_model(model_path)
    data = load_from_disk(str(out / "data"))
    validation, train = data.select(range(cfg["val_size"])), data.select(range(cfg["val_size"], len(data)))
    env = None if task is None else EnvironmentSpec.from_config(EnvironmentConfig(**task.environment))
    if env is None:
        pairs = train.map(
            lambda row: {"prompt": row["prompt"], "completion": completion(row)},
            remove_columns=[c for c in train.column_names if c != "prompt"],
        )
    else:
        pairs = demonstrations(train, tokenizer, env.schemas(), eos_token_ids(tokenizer, model)[0])
    target = AccuracyTarget(tokenizer, model, validation, cfg["eval_every"], cfg["target_accuracy"], log, env, task)
    SFTTrainer(
        model=model,
        args=sft_config(cfg, out / "trainer", seed, log),
        train_dataset=pairs,
        processing_class=tokenizer,
        callbacks=[target],
    ).train()
    shutil.rmtree(out / "trainer")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    steps, accuracy = target.history[-1]
    (out / REPORT).write_text(
        json.dumps(
            {
                "steps": steps,
                "validation_accuracy": accuracy,
                "reached_target": cfg["target_accuracy"] is None or accuracy >= cfg["target_accuracy"],
                "history": target.history,
            },
            indent=1,
        )
    )


def demonstrations(train: Dataset, tokenizer, tools: list[dict] | None, eos: int) -> Dataset:
    """Pre-tokenized SFT examples of multi-turn ``train`` rows: the prompt's tokens (as rollouts make them,
    with the tools offered), then the ``demonstration`` episode; the loss on the model's turns only."""
    if "demonstration" not in train.column_names:
        raise ValueError("the warm start of a multi-turn task needs a 'demonstration' column (an episode's messages)")

    def tokenized(row: dict) -> dict:
        prompt = tokenize_prompts([row["prompt"]], tokenizer, tools)[0]
        ids, mask = episode_ids(tokenizer, row["demonstration"], tools, eos)
        return {"input_ids": prompt + ids, "completion_mask": [0] * len(prompt) + mask}

    return train.map(tokenized, remove_columns=train.column_names)


def completion(row: dict):
    """The answer as SFT's completion: a string after a string prompt, an assistant turn after chat messages."""
    answer = str(row["answer"])
    return [{"role": "assistant", "content": answer}] if isinstance(row["prompt"], list) else answer


def _describe(out: Path) -> str:
    report = json.loads((out / REPORT).read_text())
    text = f"{report['steps']} steps, validation accuracy {report['validation_accuracy']:.3f}"
    return text if report["reached_target"] else text + " (target NOT reached: raise max_steps)"


def _fingerprint(path: Path) -> str:
    """Cheap identity of a model folder: file names, sizes and modification times."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    return hashlib.sha256(
        json.dumps([(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()
    ).hexdigest()


if __name__ == "__main__":
    episode_task = json.loads(sys.argv[6])
    supervised_stage(
        sys.argv[1],
        Path(sys.argv[2]),
        json.loads(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5] == "1",
        None if episode_task is None else EpisodeTask(**episode_task),
    )
