"""The RL loop: rollouts -> rewards -> advantages -> objective -> optimizer, on accelerate.

One step, as in docs/architecture.md::

    collect: prompts -> engine (synced to the policy, checked on a probe) -> RolloutBatch -> verifiers
             -> rewards (-> DAPO refill rounds)
    score:   no-grad pass over chunks of whole groups -> StepBatch (what objective.needs asks for)
    objective.advantages
    update:  for each epoch, mini-batch: objective.prepare (global weights), then per micro-batch
             forward -> token log-probs -> objective.loss -> backward; optimizer step
    metrics (reduced over ranks) -> progress bar, trackers, samples, checkpoints

The loop never looks at which objective it runs: it computes what ``objective.needs`` (a set of
:class:`rlkit.objectives.Need`) asks for, and nothing else.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, gather_object, set_seed
from transformers import get_scheduler
from trl.models.utils import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation

from rewards.scoring import RewardScorer
from rlkit.data import check_prompt_lengths, check_room, load_task, prompt_lengths, tokenize_prompts
from rlkit.distributed import all_max, all_sum
from rlkit.environments.spec import EnvironmentSpec
from rlkit.metrics import Metrics
from rlkit.models import (
    check_quantization_support,
    eos_token_ids,
    load_model,
    load_policy,
    load_tokenizer,
    resolve_model_path,
)
from rlkit.objectives import StepBatch, build_objective
from rlkit.objectives.registry import TEACHER_NEEDS, Need
from rlkit.recipe import Recipe
from rlkit.recipe.loader import position_limit
from rlkit.rollout import (
    EngineSetup,
    EpisodeRecord,
    RolloutBatch,
    Sampling,
    build_engine,
    check_sync,
    default_tolerance,
    engine_options,
    episode_metrics,
    run_episodes,
    sample,
)
from rlkit.trainer.checkpoint import agreed_checkpoint, load_checkpoint, save_checkpoint
from rlkit.trainer.evaluation import EvalResult, EvalTally
from rlkit.trainer.logprobs import completion_scores
from rlkit.trainer.reference import AdaptersOffReference, FrozenReference
from rlkit.trainer.startup import check_launch, check_sharding
from rlkit.trainer.tracking import RunLog
from rlkit.warm_start import EpisodeTask, warm_start

MAX_BAD_STEPS = 5  # consecutive non-finite losses or gradient norms before the run stops
EVAL_CHUNK = 256  # held-out prompts per generate call (memory only: results do not depend on it)


class TrainingDiverged(RuntimeError):
    """Raised when the loss or the gradients stay non-finite; the last checkpoint is intact."""


@dataclass
class ScoringRecord:
    """What the no-grad scoring pass computes, chunk by chunk (whole groups, in row order); a list stays
    empty where the objective does not need it."""

    logp: list[torch.Tensor] = field(default_factory=list)  # [b,T] the policy's log-probs at rollout time
    entropy: list[torch.Tensor] = field(default_factory=list)  # [b,T]
    logp_ref: list[torch.Tensor] = field(default_factory=list)  # [b,T]
    logp_teacher: list[torch.Tensor] = field(default_factory=list)  # [b,T]
    extras: list[dict[str, torch.Tensor]] = field(default_factory=list)  # the parts' on_logits, name -> [b,T]

    def extras_by_name(self) -> dict[str, torch.Tensor]:
        """The parts' statistics of every chunk, name -> [B,T] (``StepBatch.extras``)."""
        names = self.extras[0] if self.extras else {}
        return {name: torch.cat([chunk[name] for chunk in self.extras]) for name in names}


def cat_rows(chunks: list[torch.Tensor]) -> torch.Tensor | None:
    """Per-chunk [b,T] tensors as one [B,T], or None where none was computed."""
    return torch.cat(chunks) if chunks else None


Value = TypeVar("Value")


def required(value: Value | None, what: str) -> Value:
    """``value``, which the step has filled in by this point (``what`` names it if it has not)."""
    if value is None:
        raise ValueError(f"{what} is missing")
    return value


def _process_group_kwargs(timeout_s: float) -> list:
    """The recipe's collective timeout, and gloo for multi-process CPU runs: accelerate's own collectives
    need it too (docs/architecture.md, "Running on a CPU"). A single process must not ask for a backend,
    or accelerate expects a process group."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend = {"backend": "gloo"} if launched and not torch.cuda.is_available() else {}
    return [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s), **backend)]


class Trainer:
    def __init__(self, recipe: Recipe):
        """The run's parts, in order: each setup step below says why it is where it is. ``recipe`` is
        frozen (rlkit/recipe/schema.py): what the run reads from it cannot change once it starts."""
        self.recipe = recipe
        cfg = recipe.trainer
        check_quantization_support(recipe.model.lora)
        self.objective = build_objective(recipe.objective)
        self.environment = None if recipe.environment is None else EnvironmentSpec.from_config(recipe.environment)
        self.data = load_task(recipe.data, cfg.seed)
        self._setup_accelerator()
        self._split_prompts_over_ranks()
        # one process per node builds and caches (nodes may not share RLKIT_CACHE), the others then load
        with self.accelerator.local_main_process_first():
            start_path = resolve_model_path(recipe.model.path)
            self.tokenizer = load_tokenizer(start_path)  # the warm start keeps it as it is
            self._check_prompts()
            start_path = self._warm_start(start_path)
        set_seed(cfg.seed, device_specific=True)  # different sampling per rank, same init everywhere
        model = self._setup_model_and_optimizer(start_path)
        self.reference = self._prepare_reference(start_path) if Need.LOGP_REF in self.objective.needs else None
        self.teacher = self._prepare_teacher() if self.objective.needs & TEACHER_NEEDS else None

        self.version = 0  # the policy version: optimizer updates applied so far (resumed from checkpoints)
        self.engine = self._build_engine(
            start_path, eos_token_ids(self.tokenizer, model), getattr(model.config, "max_position_embeddings", None)
        )
        self.scorer = RewardScorer(recipe.rewards, workers=cfg.reward_workers)
        self.log = RunLog(self.accelerator, recipe.output_dir, cfg.steps, recipe.log, recipe.model_dump())

    # ---------------------------------------------------------------- setup steps
    def _setup_accelerator(self) -> None:
        """The Accelerator (the recipe's mixed precision and collective timeout, gloo on multi-process CPU
        runs), then the check that the launch gave the run what the recipe asks for: before any model
        loads, so a wrong launch stops at once."""
        recipe, cfg = self.recipe, self.recipe.trainer
        self.accelerator = Accelerator(
            log_with=recipe.log.trackers or None,
            project_dir=recipe.output_dir,
            mixed_precision=cfg.mixed_precision,
            kwargs_handlers=_process_group_kwargs(cfg.collective_timeout_s),
        )
        check_launch(self.accelerator, cfg)  # before any training: what the launch asked for, or stop

    def _split_prompts_over_ranks(self) -> None:
        """Each rank's share of the step's prompts: groups are whole on one rank and every rank's
        mini-batches hold whole groups, so the prompts must divide evenly (docs/architecture.md)."""
        cfg, world = self.recipe.trainer, self.accelerator.num_processes
        if cfg.prompts_per_step % (world * cfg.mini_batches):
            raise ValueError(
                f"trainer.prompts_per_step ({cfg.prompts_per_step}) must be divisible by the number "
                f"of processes ({world}) times trainer.mini_batches ({cfg.mini_batches})"
            )
        self.prompts_per_rank = cfg.prompts_per_step // world

    def _check_prompts(self) -> None:
        """Every prompt of the task, tokenized, fits the recipe's limits: before the warm start and the
        model load, so that a prompt too long fails in seconds rather than mid-run."""
        recipe = self.recipe
        tools = None if self.environment is None else self.environment.schemas()
        lengths = prompt_lengths(self.data, self.tokenizer, tools)  # every prompt, before any training
        if recipe.rollout.prompt_overflow == "error":
            check_prompt_lengths(lengths, recipe.rollout.max_prompt_tokens)
        key = "rollout.max_new_tokens" if recipe.environment is None else "environment.max_tokens"
        check_room(lengths, recipe.rollout.max_prompt_tokens, recipe.completion_tokens, *position_limit(recipe), key)

    def _warm_start(self, start_path):
        """The model RL starts from: ``start_path``, or the recipe's cached supervised warm start of it."""
        recipe, cfg = self.recipe, self.recipe.trainer
        if recipe.model.warm_start is None:
            return start_path
        env = recipe.environment
        return warm_start(
            start_path,
            self.data.train,
            recipe.model.warm_start,
            cfg.seed,
            log=self.accelerator.is_local_main_process,
            episodes=None if env is None else EpisodeTask(env.model_dump(), recipe.rollout.max_new_tokens),
        )

    def _setup_model_and_optimizer(self, start_path):
        """The policy and AdamW on its trainable parameters (only the adapters with LoRA), prepared by
        accelerate, with the LR schedule; then the check that ZeRO-3 or FSDP really sharded the policy.
        Returns the policy as loaded (its config and generation settings)."""
        recipe, cfg = self.recipe, self.recipe.trainer
        self._configure_deepspeed()
        model = load_policy(start_path, recipe.model, self.accelerator.device)
        trainable = [p for p in model.parameters() if p.requires_grad]  # only the adapters with LoRA
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Not passed to accelerator.prepare: accelerate would step it once per process at every call (and
        # DeepSpeed inside its engine), so warmup and decay would run N times too fast on N processes.
        # rlkit steps it once per applied optimizer update; save_state/load_state still carry it.
        self.scheduler = get_scheduler(
            cfg.lr_schedule,
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.steps * self.updates_per_step,
        )
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        check_sharding(self.accelerator, self.model)
        return model

    def _configure_deepspeed(self) -> None:
        """The recipe's settings that DeepSpeed reads from its own config, written there before ``prepare``."""
        if self.accelerator.state.deepspeed_plugin is None:
            return
        cfg = self.recipe.trainer
        # DeepSpeed insists on a batch size; rlkit feeds no dataloader and forms its own micro-batches, so
        # this number only satisfies the check
        ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        ds_config["gradient_clipping"] = cfg.max_grad_norm or 0.0  # the engine clips inside its step; 0 = off

    # ---------------------------------------------------------------- frozen models and the engine
    def _prepare_reference(self, path):
        """The KL reference: with LoRA, the policy with its adapters disabled (no second copy)."""
        if self.recipe.model.lora is not None:
            return AdaptersOffReference(self.model, self.accelerator.unwrap_model(self.model), self._forward)
        return FrozenReference(self._prepare_frozen(path, self.recipe.model.dtype), self._forward)

    def _prepare_frozen(self, path, dtype: str):
        """A model run without gradients, placed like the policy."""
        frozen = load_model(path, dtype, self.accelerator.device).eval().requires_grad_(False)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return prepare_deepspeed(frozen, self.accelerator)  # sharded like the policy under ZeRO-3
        if self.accelerator.distributed_type == DistributedType.FSDP:
            return prepare_fsdp(frozen, self.accelerator)  # sharded too (accelerate would copy it whole)
        return self.accelerator.prepare_model(frozen, evaluation_mode=True)

    def _prepare_teacher(self):
        """The recipe's teacher (warm-started if asked, cached), frozen and placed like the reference."""
        teacher = self.recipe.teacher
        if teacher is None:
            raise ValueError(f"objective {self.objective.name} distills from a teacher: the recipe needs teacher:")
        with self.accelerator.local_main_process_first():
            path = resolve_model_path(teacher.path)
            if teacher.warm_start is not None:
                path = warm_start(
                    path,
                    self.data.train,
                    teacher.warm_start,
                    self.recipe.trainer.seed,
                    log=self.accelerator.is_local_main_process,
                )
        return self._prepare_frozen(path, teacher.dtype)

    def _build_engine(self, start_path, eos_ids: list[int], positions: int | None):
        """The recipe's rollout engine, its sync tolerance, and the probe its syncs are checked on: the
        first training prompt's tokens (at most 32). The engine holds prompt + completion tokens, at most
        the model's ``positions``."""
        r, cfg = self.recipe.rollout, self.recipe.trainer
        options = engine_options(r.engine)
        self.sync_tol = options.sync_tol or default_tolerance(self.recipe.model.dtype, cfg.mixed_precision)
        self.probe = tokenize_prompts([self.data.train[0]["prompt"]], self.tokenizer)[0][-32:]
        dtype = {"no": self.recipe.model.dtype, "bf16": "bfloat16", "fp16": "float16"}[cfg.mixed_precision]
        setup = EngineSetup(
            model_path=str(start_path),
            tokenizer=self.tokenizer,
            eos_token_ids=eos_ids,
            dtype=dtype,
            device=self.accelerator.device,
            seed=cfg.seed + self.accelerator.process_index,
            max_model_len=min(r.max_prompt_tokens + self.recipe.completion_tokens, positions or 1 << 30),
            live_policy=self._generation,
            synced_gpus=self._sharded,
        )
        self.sampling = Sampling(
            n=r.samples_per_prompt, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p
        )
        return build_engine(r.engine, setup)

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per RL step: ``epochs_per_rollout`` passes over the rollout batch, each of
        ``mini_batches`` mini-batches."""
        return self.recipe.trainer.mini_batches * self.recipe.trainer.epochs_per_rollout

    @property
    def _needs_proximal(self) -> bool:
        """The objective compares the policy with the one at the start of the step (``logp_old``) and the
        policy changes within the step (several optimizer steps per rollout batch). With one optimizer
        step the proximal policy is the current one, sg(pi_theta): ratio 1, nothing to compute."""
        return self.updates_per_step > 1 and Need.LOGP_OLD in self.objective.needs

    @property
    def _sharded(self) -> bool:
        """Parameters are split over several ranks (ZeRO-3 or FSDP): ``generate`` then gets ``synced_gpus``,
        so that a rank whose completions end early keeps joining the others' collectives (FSDP gathers
        parameters in every forward; ZeRO-3 does too where TRL does not gather them for generation)."""
        plugin = self.accelerator.state.deepspeed_plugin
        zero3 = plugin is not None and plugin.zero_stage == 3
        fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        return (zero3 or fsdp) and self.accelerator.num_processes > 1

    # ---------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run the recipe to its last step, resuming from the latest checkpoint; returns the summary.
        The verifier pool and the trackers are closed however the run ends (error, divergence, Ctrl-C)."""
        try:
            summary = self._train()
            # Ranks leave together: accelerate's end_training (in log.close) tears the process group
            # down, which must not happen while a peer still talks to it.
            self.accelerator.wait_for_everyone()
            return summary
        finally:
            self.engine.close()  # first: an engine may hold process groups that log.close() would outlive
            self.log.close()
            self.scorer.close()

    def _train(self) -> dict:
        cfg, log_cfg = self.recipe.trainer, self.recipe.log
        start_step, state = self._resume()
        t0 = time.time() - state.get("elapsed", 0.0)
        eval_start = state.get("eval_start")
        if eval_start is None:
            start = self.evaluate()
            self.log.metrics(0, start.metrics())
            self.log.write(f"held-out {start.describe()} at the start of RL")
            eval_start = start.record()
        bad_steps, step = 0, start_step
        for step in range(start_step + 1, cfg.steps + 1):
            metrics, samples = self.step(step)
            bad_steps = bad_steps + 1 if metrics["train/skipped_updates"] else 0
            if bad_steps >= MAX_BAD_STEPS:
                raise TrainingDiverged(
                    f"non-finite loss or gradients in {bad_steps} consecutive steps "
                    f"(step {step}); last checkpoint kept in {self.recipe.output_dir}"
                )
            self.log.step(step, metrics)
            if step % log_cfg.every == 0 or step == cfg.steps:
                metrics["time/elapsed_s"] = time.time() - t0
                self.log.metrics(step, metrics)
                self.log.samples(step, samples[: log_cfg.samples])
            if log_cfg.eval_every and step % log_cfg.eval_every == 0 and step != cfg.steps:
                self._log_eval(step)
            if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
                self._save(step, t0, eval_start)
        eval_end = self._log_eval(cfg.steps)
        self._save(cfg.steps, t0, eval_start)
        summary = {
            "steps": cfg.steps,
            "resumed_from": start_step or None,
            "wall_seconds": time.time() - t0,
            "objective": self.objective.name,
            "eval_start": eval_start,
            "eval_end": eval_end.record(),
        }
        self.log.summary(summary)
        return summary

    def step(self, step: int) -> tuple[dict[str, float], list[dict]]:
        """One RL step: rollouts, rewards, advantages and the optimizer updates. Returns metrics, samples."""
        metrics = Metrics()
        t = time.time()
        rollout = self.collect(step, metrics)
        metrics.mean("time/rollout_s", time.time() - t)
        rewards = required(rollout.rewards, "the rollout's rewards")
        batch = self.score(rollout, progress=(step - 1) / self.recipe.trainer.steps, metrics=metrics)
        batch.advantages = self.objective.advantages(rewards, batch, metrics)
        t = time.time()
        if self.accelerator.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.accelerator.device)
        self.update(batch, step, metrics)
        metrics.mean("time/update_s", time.time() - t)
        if self.accelerator.device.type == "cuda":  # the update's peak (the largest over ranks is logged)
            metrics.max(
                "train/peak_mem_gib", torch.tensor(torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30)
            )
        samples = [
            {
                "prompt": rollout.prompts[i],
                "completion": rollout.completions[i],
                "reward": float(rewards[i]),
                "advantage": float(batch.advantages[i]),
                **({} if rollout.episodes is None else {"episode": rollout.episodes[i].transcript}),
            }
            for i in range(0, len(rollout), self.recipe.rollout.samples_per_prompt)
        ]
        return self._reduce(metrics), samples

    def collect(self, step: int, metrics: Metrics) -> RolloutBatch:
        """The step's scored rollouts. With dynamic sampling in ``refill`` mode (DAPO), groups whose
        rewards are all equal are replaced by groups of fresh prompts, round after round, until every
        rank holds its quota of informative groups or ``max_rounds`` rounds ran; a shortfall is filled
        with uninformative groups, which the objective then masks, so batch shapes never change."""
        rollout = self.rewards_for(self.rollout(step), metrics)
        metrics.mean("rollout/sync_probe_diff", self.sync_probe_diff)  # of the sync before this step's rollout
        refill = self.objective.rollout_filter
        if refill is None:
            return rollout
        quota, max_rounds = rollout.n_groups, refill.max_rounds
        kept, rejected, rounds = [], [], 0
        while True:
            keep = refill.keep(rollout.rewards, rollout.group_ids)
            kept.append(rollout.select_groups(keep))
            rejected.append(rollout.select_groups(~keep))
            rounds += 1
            missing = max(0, quota - sum(b.n_groups for b in kept))
            if int(all_sum(torch.tensor(missing, device=keep.device))) == 0 or 0 < max_rounds <= rounds:
                break
            rollout = self.rewards_for(self.rollout(step, round=rounds), metrics)
        metrics.mean("rollout/refill_rounds", float(rounds))
        metrics.mean("rollout/refill_shortfall_groups", float(missing))
        full = RolloutBatch.concat(kept + rejected, self.tokenizer.pad_token_id)
        return full.select_groups(torch.arange(full.n_groups, device=full.group_ids.device) < quota)

    def rewards_for(self, rollout: RolloutBatch, metrics: Metrics) -> RolloutBatch:
        """Run the verifiers on ``rollout`` and record the total rewards in it."""
        columns = {**rollout.columns, "completion_tokens": rollout.lengths.long().tolist()}
        scores = self.scorer(rollout.prompts, rollout.completions, columns)
        for failure in scores.failures[:3]:
            self.log.write(f"  reward failure: {failure}")
        rollout.rewards = torch.tensor(scores.total, dtype=torch.float32, device=rollout.group_ids.device)
        if rollout.episodes is not None:
            rollout.rewards = self._episode_rewards(rollout.episodes, rollout.truncated, rollout.rewards)
            episode_metrics(metrics, rollout.episodes, rollout.rewards, self.recipe.eval.pass_threshold)
        self._rollout_metrics(metrics, rollout, scores.metrics)
        return rollout

    def _episode_rewards(
        self, episodes: list[EpisodeRecord], truncated: torch.Tensor, verified: torch.Tensor
    ) -> torch.Tensor:
        """[B] each episode's reward: the verifiers' total on its final turn (``verified``) plus the
        environment's rewards, or ``environment.truncated_reward`` where it was ``truncated`` (if set)."""
        env = required(self.recipe.environment, "the recipe's environment")
        total = verified + torch.tensor([e.env_reward for e in episodes], device=verified.device)
        if env.truncated_reward is None:
            return total
        return total.masked_fill(truncated, env.truncated_reward)

    # ---------------------------------------------------------------- stages
    def prompts_for(self, step: int, round: int = 0) -> tuple[list, dict[str, list]]:
        """This rank's prompts of ``step``: consecutive slices of seeded permutations of the train set;
        refill rounds (``round`` > 0) draw from a permutation seeded by (seed, step, round).

        Depends only on (seed, step, round, rank), so a resumed run sees exactly the prompts it would have.
        """
        n, total, seed = len(self.data.train), self.recipe.trainer.prompts_per_step, self.recipe.trainer.seed
        offset = self.accelerator.process_index * self.prompts_per_rank
        if round:
            order = np.random.default_rng([seed, step, round]).permutation(n)
            indices = [int(order[(offset + i) % n]) for i in range(self.prompts_per_rank)]
        else:
            first = (step - 1) * total + offset
            perms: dict[int, np.ndarray] = {}
            indices = []
            for pos in range(first, first + self.prompts_per_rank):
                epoch = pos // n
                if epoch not in perms:
                    perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
                indices.append(int(perms[epoch][pos % n]))
        rows = self.data.train.select(indices)
        return list(rows["prompt"]), {c: list(rows[c]) for c in rows.column_names if c != "prompt"}

    @torch.no_grad()
    def rollout(self, step: int, round: int = 0) -> RolloutBatch:
        prompts, columns = self.prompts_for(step, round)
        return self._sample(prompts, columns, self.sampling)

    @torch.no_grad()
    def _sample(self, prompts: list, columns: dict[str, list], sampling: Sampling) -> RolloutBatch:
        """Completions of ``prompts`` from the engine, synced to the current policy first; the engine
        sleeps again afterwards (where it can), so the update has its memory."""
        self.sync_engine()
        limit = self.recipe.rollout.max_prompt_tokens
        if self.environment is None:
            batch = sample(self.engine, prompts, columns, sampling, limit)
        else:
            batch = run_episodes(self.engine, self.environment, prompts, columns, sampling, limit, self._any_rank)
        self.engine.sleep()
        return batch

    def _any_rank(self, running: bool) -> bool:
        """Whether any rank still runs episodes: with sharded parameters every rank must make the same number of
        ``generate`` calls (rlkit/rollout/episodes.py); otherwise each rank stops on its own."""
        if not self._sharded:
            return running
        return bool(all_max(torch.tensor(float(running), device=self.accelerator.device)) > 0)

    @torch.no_grad()
    def sync_engine(self) -> None:
        """Push the policy's weights to the engine if they changed since its last sync (or it never had any),
        then check them: the engine's log-probs on the probe must equal the trainer's within ``sync_tol``,
        or the run stops with :class:`rlkit.rollout.EngineOutOfSync`. Every rank syncs its own engine."""
        if self.engine.version == self.version:
            return
        self.engine.wake_up()
        if self.engine.shares_trainer_weights:
            self.engine.sync_weights(self.model, self.version)
        else:
            with self._generation() as policy:  # ZeRO-3 shards gathered: every parameter whole
                self.engine.sync_weights(policy, self.version)
        ids = torch.tensor([self.probe], device=self.accelerator.device)
        ones = torch.ones_like(ids)
        self.model.eval()
        trainer = completion_scores(self.model, ids[:, :1], ones[:, :1], ids[:, 1:], ones[:, 1:].float(), 1.0)
        self.model.train()
        engine = self.engine.probe_logp(self.probe).to(trainer.logp.device)
        diff = all_max((engine - trainer.logp[0]).abs().max().nan_to_num(torch.inf))
        self.sync_probe_diff = check_sync(diff, self.sync_tol, self.engine.options.type, self.version)

    @torch.no_grad()
    def score(self, rollout: RolloutBatch, progress: float, metrics: Metrics) -> StepBatch:
        """The no-grad pass before the update: what ``objective.needs`` asks for, plus parts' hooks, and the
        check of the behaviour log-probs against the trainer's (:meth:`_behaviour_metrics`)."""
        batch = StepBatch(
            mask=rollout.loss_mask,
            advantages=torch.zeros_like(required(rollout.rewards, "the rollout's rewards")),
            group_ids=rollout.group_ids,
            truncated=rollout.truncated,
            progress=progress,
            prompt_ids=rollout.prompt_ids,
            prompt_mask=rollout.prompt_mask,
            completion_ids=rollout.completion_ids,
            logp_behaviour=rollout.logp,
        )
        needs = self.objective.needs
        recompute = self._needs_proximal and self.recipe.rollout.logp_old == "recompute"
        with_logits = Need.LOGITS in needs
        with_entropy = Need.ENTROPY in needs
        with_policy = recompute or with_entropy or with_logits or Need.LOGP_TRAINER in needs
        record = ScoringRecord()
        for rows in self._group_chunks(len(rollout)):
            chunk = batch.rows(rows)
            teacher = None
            if needs & {Need.LOGP_TEACHER, Need.TEACHER_LOGITS}:
                teacher = self._forward(self.teacher, chunk, with_logits=Need.TEACHER_LOGITS in needs)
                record.logp_teacher.append(teacher.logp)
            if with_policy:
                s = self._forward(self.model, chunk, with_entropy=with_entropy, with_logits=with_logits)
                record.logp.append(s.logp)
                if s.entropy is not None:
                    record.entropy.append(s.entropy)
                if s.logits is not None:
                    record.extras.append(
                        self.objective.on_logits(
                            s.logits,
                            rollout.completion_ids[rows],
                            chunk.mask,
                            chunk.group_ids,
                            teacher_logits=teacher.logits if teacher else None,
                        )
                    )
            if self.reference is not None:
                record.logp_ref.append(self.reference.logp(chunk))
        trainer_logp = cat_rows(record.logp)
        self._behaviour_metrics(rollout, batch, trainer_logp, metrics)
        if self._needs_proximal:
            batch.logp_old = trainer_logp if recompute else rollout.logp
        if Need.LOGP_TRAINER in needs:
            batch.logp_trainer = trainer_logp
        batch.entropy = cat_rows(record.entropy)
        batch.logp_ref = cat_rows(record.logp_ref)
        batch.logp_teacher = cat_rows(record.logp_teacher)
        batch.extras = record.extras_by_name()
        return batch

    def _behaviour_metrics(
        self, rollout: RolloutBatch, batch: StepBatch, trainer_logp: torch.Tensor | None, metrics: Metrics
    ) -> None:
        """``rollout/logp_diff_mean|max``: |log mu - log pi| over the sampled tokens, mu the engine's
        behaviour log-probs and pi the trainer's for the same tokens and weights, from the scoring pass
        when it ran, else from a forward of this rank's first group (every rank runs one, so collectives
        stay in step); ``rollout/policy_version_lag``: policy versions between sampling and training.
        (``rollout/sync_probe_diff`` is logged by :meth:`collect`.)"""
        rows = slice(None) if trainer_logp is not None else slice(0, self.recipe.rollout.samples_per_prompt)
        if trainer_logp is None:
            trainer_logp = self._forward(self.model, batch.rows(rows)).logp
        mask = rollout.loss_mask[rows]  # the model's tokens: replies of an episode have no behaviour log-prob
        diff = (required(rollout.logp, "the rollout's behaviour log-probs")[rows] - trainer_logp).abs() * mask
        metrics.mean("rollout/logp_diff_mean", diff, mask)
        metrics.max("rollout/logp_diff_max", diff.max())
        metrics.mean("rollout/policy_version_lag", (self.version - rollout.policy_version).float())

    def update(self, batch: StepBatch, step: int, metrics: Metrics) -> None:
        """``epochs_per_rollout`` x ``mini_batches`` optimizer steps on one rollout batch; each epoch
        deals this rank's groups into mini-batches in a fresh order, seeded by (seed, step, epoch)."""
        cfg = self.recipe.trainer
        G = self.recipe.rollout.samples_per_prompt
        n_groups = batch.n_rows // G
        for epoch in range(cfg.epochs_per_rollout):
            order = np.random.default_rng([cfg.seed, step, epoch]).permutation(n_groups)
            for groups in np.array_split(order, cfg.mini_batches):
                rows = torch.from_numpy(groups[:, None] * G + np.arange(G)).flatten().to(batch.mask.device)
                self.optimizer_step(batch.rows(rows), metrics)

    def optimizer_step(self, batch: StepBatch, metrics: Metrics) -> None:
        """One optimizer step on ``batch``, a mini-batch of whole groups."""
        self.accumulate_gradients(batch, metrics)
        self._apply_gradients(metrics)

    def accumulate_gradients(self, batch: StepBatch, metrics: Metrics) -> None:
        """The gradient of the objective on ``batch``, accumulated over micro-batches into ``.grad``.

        The weights come from ``objective.prepare`` on the whole mini-batch, so the gradient does not
        depend on ``micro_batch_size``. Rows whose loss is exactly zero are not run (zero weights, or a zero
        advantage where :meth:`Objective.active_tokens` allows it). Every rank runs the same number of
        micro-batches (ZeRO-3 gathers parameters collectively in each forward).
        """
        weights = self.objective.prepare(batch, metrics)
        active = torch.nonzero(self.objective.active_rows(batch, weights)).flatten()
        metrics.mean("train/active_row_frac", len(active) / max(1, batch.n_rows))  # the rest are not run
        if len(active) == 0:  # nothing to learn on this rank: a zero-weight row keeps ranks in step
            active = torch.zeros(1, dtype=torch.long, device=weights.device)
        chunks = self._micro_batches(batch, active)
        n_real, n_micro = len(chunks), int(all_max(torch.tensor(len(chunks), device=weights.device)))
        chunks += [active[:1]] * (n_micro - n_real)  # padding micro-batches, given zero weight below
        with_logits = Need.STUDENT_LOGITS in self.objective.needs
        for i, rows in enumerate(chunks):
            rows_batch = batch.rows(rows)
            real = i < n_real
            w = weights[rows] if real else torch.zeros_like(weights[rows])
            with self._grad_sync(last=i == n_micro - 1):
                # full-vocabulary losses: both models' logits at the active tokens only ([n,V]), the
                # teacher's for these rows only and without gradient: never [B,T,V] for the step
                positions = self.objective.active_tokens(rows_batch, w) if with_logits else None
                s = self._forward(
                    self.model,
                    rows_batch,
                    with_entropy=bool(self.objective.entropy_bonus),
                    with_logits=with_logits,
                    positions=positions,
                )
                teacher_logits = (
                    self._forward(self.teacher, rows_batch, with_logits=True, positions=positions).logits
                    if with_logits
                    else None
                )
                loss = self.objective.loss(
                    s.logp,
                    rows_batch,
                    w,
                    metrics if real else Metrics(),
                    entropy=s.entropy,
                    logits=s.logits,
                    teacher_logits=teacher_logits,
                )
                # a padding micro-batch contributes nothing, whatever terms carry weights of their own (KL)
                self.accelerator.backward(loss if real else 0.0 * loss)

    def _apply_gradients(self, metrics: Metrics) -> None:
        """Clip, step and schedule, unless the gradient norm is not finite (the update is then skipped).

        Under DeepSpeed the engine has already stepped inside the last ``backward`` and skips a
        non-finite step by itself (its overflow check, for fp32 too); ``was_step_applied`` reports it.
        """
        max_norm = self.recipe.trainer.max_grad_norm
        lr = self.optimizer.param_groups[0]["lr"]  # what this update uses
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm or math.inf)
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            applied = self.model.was_step_applied()
        else:
            applied = math.isfinite(grad_norm)
            if applied:
                self.optimizer.step()
        if applied:
            self.scheduler.step()
            self.version += 1
        self.optimizer.zero_grad(set_to_none=True)
        metrics.mean("train/grad_norm", grad_norm)
        metrics.mean("train/skipped_updates", 0.0 if applied else 1.0)
        metrics.mean("train/lr", lr)

    # ---------------------------------------------------------------- evaluation and records
    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """The recipe's held-out metric (``eval:``, docs/evaluation.md) on this rank's share of the held-out
        set: one greedy completion per prompt (k = 1), or k sampled at ``eval.temperature`` (mean@k, pass@k),
        seeded per prompt from ``trainer.seed`` (:class:`Sampling`), so that neither the number of
        processes nor EVAL_CHUNK changes them, and every evaluation of the run draws the same noise.

        Every rank makes the same number of ``generate`` calls, ceil(ceil(N / world) / EVAL_CHUNK): with
        sharded parameters every decoding step runs collectives (``synced_gpus``, FSDP's all-gathers), so
        a rank with one call more would wait forever. The shards (rows rank, rank + world, ...) are padded
        to ceil(N / world) rows with row 0, whose completions are not scored.
        """
        cfg, max_new_tokens = self.recipe.eval, self.recipe.rollout.max_new_tokens
        rank, world, n = self.accelerator.process_index, self.accelerator.num_processes, len(self.data.eval)
        own, per_rank = range(rank, n, world), -(-n // world)
        shard = self.data.eval.select([*own, *[0] * (per_rank - len(own))])
        if cfg.k == 1:
            sampling = Sampling(n=1, max_new_tokens=max_new_tokens, greedy=True)
        else:
            seed = self.recipe.trainer.seed
            sampling = Sampling(n=cfg.k, max_new_tokens=max_new_tokens, temperature=cfg.temperature, seed=seed)
        tally = EvalTally(cfg.metric, cfg.k, cfg.pass_threshold, episodes=self.environment is not None)
        for start in range(0, per_rank, EVAL_CHUNK):
            rows = shard.select(range(start, min(start + EVAL_CHUNK, per_rank)))
            columns = {c: list(rows[c]) for c in rows.column_names if c != "prompt"}
            out = self._sample(list(rows["prompt"]), columns, sampling)
            real = slice(0, max(0, len(own) - start) * cfg.k)  # the padding rows come last
            columns = {**out.columns, "completion_tokens": out.lengths.long().tolist()}  # as in training
            scores = self.scorer(out.prompts[real], out.completions[real], {c: v[real] for c, v in columns.items()})
            if out.episodes is None:
                tally.add(scores)
                continue
            episodes = out.episodes[real]
            total = self._episode_rewards(episodes, out.truncated[real].cpu(), torch.tensor(scores.total))
            tally.add(replace(scores, total=total.tolist()), [e.tool_calls > 0 for e in episodes])
        return tally.result(all_sum(tally.sums))

    def _log_eval(self, step: int) -> EvalResult:
        result = self.evaluate()
        self.log.metrics(step, result.metrics())
        self.log.write(f"step {step}: held-out {result.describe()}")
        return result

    def _rollout_metrics(self, metrics: Metrics, rollout: RolloutBatch, verifier_metrics: dict[str, float]) -> None:
        rewards = required(rollout.rewards, "the rollout's rewards")
        valid = ~torch.isnan(rewards)
        metrics.mean("reward/mean", rewards, valid)
        metrics.mean("reward/std", rewards[valid].std() if valid.sum() > 1 else 0.0)
        metrics.mean("reward/abstained_frac", (~valid).float())
        for k, v in verifier_metrics.items():
            metrics.mean(k, v)
        metrics.mean("rollout/len_mean", rollout.lengths)
        metrics.max("rollout/len_max", rollout.lengths)
        metrics.mean("rollout/truncated_frac", rollout.truncated.float())

    def _reduce(self, metrics: Metrics) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return metrics.result()
        return Metrics.combine(gather_object([metrics.state()]))

    def _resume(self) -> tuple[int, dict]:
        path = agreed_checkpoint(self.accelerator, self.recipe.output_dir) if self.recipe.trainer.resume else None
        if path is None:
            self.log.start_at(0)
            return 0, {}
        state = load_checkpoint(self.accelerator, path)
        self.version = state["policy_version"]
        self.log.start_at(state["step"])
        self.log.write(f"resumed from {path} (step {state['step']})")
        return state["step"], state

    def _save(self, step: int, t0: float, eval_start: dict) -> None:
        state = {"step": step, "elapsed": time.time() - t0, "eval_start": eval_start, "policy_version": self.version}
        save_checkpoint(
            self.accelerator,
            self.model,
            self.tokenizer,
            self.recipe.output_dir,
            step,
            state,
            self.recipe.trainer.keep_checkpoints,
        )

    # ---------------------------------------------------------------- small utilities
    def _micro_batches(self, batch: StepBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` [n] in micro-batches of ``micro_batch_size`` rows, or of ``micro_batch_tokens`` tokens
        (:func:`split_by_tokens`; a row's tokens: its prompt and completion, what the packed forward runs)."""
        budget = self.recipe.trainer.micro_batch_tokens
        if budget is None:
            return list(rows.split(self.recipe.trainer.micro_batch_size))
        prompt_mask = required(batch.prompt_mask, "StepBatch.prompt_mask")
        return split_by_tokens(rows, (prompt_mask.sum(-1) + batch.mask.sum(-1))[rows], budget)

    def _group_chunks(self, n_rows: int) -> list[slice]:
        """Row slices of whole groups, about ``micro_batch_size`` rows each (scoring pass)."""
        G = self.recipe.rollout.samples_per_prompt
        size = max(G, self.recipe.trainer.micro_batch_size // G * G)
        return [slice(i, min(i + size, n_rows)) for i in range(0, n_rows, size)]

    @contextlib.contextmanager
    def _generation(self):
        """The policy for generation or a weight sync, in eval mode (ZeRO-3 shards gathered), under one
        autocast for the whole call: the per-forward autocast of a mixed-precision model would cast every
        weight again at every decoding step, since autocast's cache of cast weights lives only as long as
        its outermost context."""
        self.model.eval()
        try:
            with unwrap_model_for_generation(self.model, self.accelerator) as policy, self.accelerator.autocast():
                yield policy
        finally:
            self.model.train()

    def _forward(self, model, batch: StepBatch, **kwargs):
        return completion_scores(
            model,
            batch.prompt_ids,
            batch.prompt_mask,
            batch.completion_ids,
            batch.mask,
            self.recipe.rollout.temperature,
            **kwargs,
        )

    def _grad_sync(self, last: bool):
        """Gradients are reduced across ranks only on the last micro-batch of an optimizer step.

        DDP skips its all-reduce inside ``no_sync``; DeepSpeed reads accelerate's ``sync_gradients`` to
        know the accumulation boundary (set here as transformers' Trainer does, since the number of
        micro-batches varies from step to step).
        """
        self.accelerator.gradient_state._set_sync_gradients(last)
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)


def split_by_tokens(rows: torch.Tensor, tokens: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """``rows`` [n] in micro-batches by token budget: longest first (``tokens`` [n], each row's count), each
    micro-batch as many rows as fit in ``budget`` tokens, a row longer than the budget alone."""
    order = torch.argsort(tokens, descending=True, stable=True)
    chunks, start, used = [], 0, 0
    for i, n in enumerate(tokens[order].tolist()):
        if used + n > budget and i > start:
            chunks.append(rows[order[start:i]])
            start, used = i, 0
        used += n
    return chunks + [rows[order[start:]]]
