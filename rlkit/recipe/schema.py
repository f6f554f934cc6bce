"""The recipe schema: every field of a recipe, documented once, here.

A recipe is YAML validated into :class:`Recipe`. Unknown keys are errors (``extra="forbid"``) that the
loader reports with their key path, the YAML line and the closest valid key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from accelerate.utils import LoggerType
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.scoring import RewardSpec
from rlkit.builtins import BUILTIN_MODELS, BUILTIN_TASKS, BUILTIN_TINY, BUILTIN_TINY_TEACHER
from rlkit.recipe.data_check import READERS as DATA_FILE_TYPES  # suffix -> reader


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, and a validated recipe is frozen (assigning
    a field raises), so the options a run reads cannot change under it; derive a variant with
    ``model_copy(update=...)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_path(value: str | None, what: str) -> str | None:
    if value is not None and not Path(value).exists():
        raise ValueError(f"{what} {value!r} does not exist (relative paths are from the working directory)")
    return value


class WarmStartConfig(Section):
    """A short supervised stage on the task's answers before RL, stopped once greedy accuracy on a
    validation slice of the training prompts reaches a target (or after max_steps, with no target); cached
    by its settings (rlkit/warm_start.py)."""

    target_accuracy: float | None = Field(
        0.2,
        gt=0,
        le=1,
        description="stop once validation exact-match accuracy reaches this (checked every eval_every steps); "
        "null: run all max_steps",
    )
    max_steps: int = Field(2000, gt=0, description="upper bound on optimizer steps (the step count, with no target)")
    eval_every: int = Field(10, gt=0, description="optimizer steps between validation checks")
    val_size: int = Field(
        200,
        gt=0,
        description="first rows of the training data used for validation "
        "(not trained on by this stage; never the held-out eval set)",
    )
    lr: float = Field(2e-3, gt=0, description="learning rate (AdamW)")
    lr_schedule: Literal["constant", "linear"] = Field("constant", description="see rlkit/warm_start.py")
    batch_size: int = Field(128, gt=0, description="examples per step")


class LoraSettings(Section):
    """PEFT LoRA on the policy, added after the warm start (which stays full-parameter): only the adapters
    train, and the KL reference is the same network with its adapters disabled, never a second copy. The
    names are those of peft's ``LoraConfig``. A targeted weight W [out,in] acts as
    W + (lora_alpha / r) * B A, with A [r,in] random and B [out,r] zero at the start, so RL starts from the
    warm-started model exactly. Checkpoints hold the adapter (peft format); `rlkit export RUN` merges it."""

    r: int = Field(16, gt=0, description="rank of the adapters")
    lora_alpha: float = Field(32.0, gt=0, description="scale: the update B A is multiplied by lora_alpha / r")
    lora_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the adapters' input; it makes every forward "
        "random, so importance ratios are no longer 1 on-policy",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        min_length=1,
        description="names (or name suffixes) of the linear layers given adapters; "
        "'all-linear': every linear layer but the output head",
    )
    load_in_4bit: bool = Field(
        False,
        description="QLoRA: the frozen base weights in 4-bit NF4 (bitsandbytes, on a "
        "CUDA device), computing in model.dtype",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names_or_all_linear(cls, v):
        if not isinstance(v, list) and v != "all-linear":  # one clear message rather than one per union member
            raise ValueError(f"a list of module names, or 'all-linear'; got {v!r}")
        return v


class ModelConfig(Section):
    path: str = Field(
        BUILTIN_TINY,
        description=f"built-in model, one of {BUILTIN_MODELS} (see rlkit/models.py), "
        "or a local Hugging Face model folder",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="parameter dtype")
    warm_start: WarmStartConfig | None = Field(None, description="supervised stage before RL (cached)")
    lora: LoraSettings | None = Field(None, description="train LoRA adapters instead of every weight (peft)")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v):
        return v if v in BUILTIN_MODELS else _existing_path(v, "model folder")


class TeacherConfig(Section):
    """The frozen teacher of on-policy distillation (objective presets opd, opd_tip, opd_q3): run without
    gradients and placed like the reference model (sharded under ZeRO-3). It must share the model's
    tokenizer, which `rlkit check` verifies from the tokenizer files, before any weights load."""

    path: str = Field(
        BUILTIN_TINY_TEACHER,
        description=f"built-in model, one of {BUILTIN_MODELS}, or a local Hugging Face model folder",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="parameter dtype")
    warm_start: WarmStartConfig | None = Field(
        None,
        description="supervised stage on the task before use, as "
        "model.warm_start (cached); trains a built-in "
        "teacher to high accuracy",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v):
        return v if v in BUILTIN_MODELS else _existing_path(v, "teacher folder")


# the files datasets' save_to_disk writes at the top of its folder: a Dataset's, a DatasetDict's
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")


class DataSource(Section):
    """Where one split of data is read from; in a recipe, a plain string is its ``path``.

    The ``path`` decides how it is read (rlkit/data.py): a local data file (.jsonl/.json/.parquet/.csv),
    a folder written by ``datasets``' ``save_to_disk`` (a Dataset, or a DatasetDict and its ``split``),
    else anything ``datasets.load_dataset(path, name, split=split)`` reads: a Hub id, a local dataset folder.
    """

    path: str = Field(
        description="a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder, or a Hub id "
        "(or local dataset folder) for datasets.load_dataset"
    )
    name: str | None = Field(None, description="the configuration of a Hub dataset (load_dataset's name), e.g. main")
    split: str | None = Field(
        None, description="the split to read: required for a Hub dataset and a saved DatasetDict, e.g. train"
    )

    @property
    def kind(self) -> Literal["file", "saved", "hub"]:
        path = Path(self.path)
        if path.is_file() or path.suffix in DATA_FILE_TYPES:
            return "file"
        if any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            return "saved"
        return "hub"

    def __str__(self) -> str:
        extras = [f"{key} {getattr(self, key)}" for key in ("name", "split") if getattr(self, key) is not None]
        return self.path + (f" ({', '.join(extras)})" if extras else "")

    @model_validator(mode="after")
    def _fits_the_kind(self):
        kind = self.kind
        if kind == "file":
            _existing_path(self.path, "data file")
            if self.name is not None or self.split is not None:
                raise ValueError(
                    f"{self.path} is a data file, one split: name and split are for datasets folders and Hub ids"
                )
        elif kind == "saved" and self.name is not None:
            raise ValueError(f"{self.path} is a save_to_disk folder, which has no configurations: remove name")
        elif kind == "hub" and self.split is None:
            raise ValueError(
                f"{self.path} is not a local file or save_to_disk folder, so datasets.load_dataset reads it (a Hub "
                f"id or a dataset folder), one split at a time: give split, e.g. {{path: {self.path}, split: train}}"
            )
        return self


class DataConfig(Section):
    task: str | None = Field(
        "builtin:addition", description=f"built-in task, one of {BUILTIN_TASKS}; null to use train/eval data"
    )
    train: DataSource | None = Field(
        None,
        description="training data with a 'prompt' column: a local file path, a save_to_disk folder, or "
        "{path: HUB_ID, name: CONFIG, split: SPLIT} (see DataSource and docs/data.md)",
    )
    eval: DataSource | None = Field(None, description="held-out data, as train (default: a slice of train)")
    columns: dict[str, str] = Field(
        {},
        description="rlkit's column names (prompt, and the columns the verifiers read) -> the data's own, "
        "e.g. {prompt: question, answer: solution}: renamed when train and eval are loaded, the others kept",
    )
    eval_size: int = Field(
        200,
        gt=0,
        description="held-out prompts used for evaluation: the first of the "
        "built-in task's; without eval data, a slice of the train data "
        "of at most a fifth of it (it must have eval_size rows)",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, v):
        if v is not None and v not in BUILTIN_TASKS:
            raise ValueError(f"unknown built-in task {v!r}; choose one of {BUILTIN_TASKS} or set task: null")
        return v

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _path_alone(cls, v):
        return {"path": v} if isinstance(v, str) else v

    @field_validator("columns")
    @classmethod
    def _one_name_per_column(cls, v):
        for ours, theirs in v.items():
            first = next(name for name, column in v.items() if column == theirs)
            if first != ours:
                raise ValueError(f"{first} and {ours} both map to the data's {theirs!r}: a column is renamed once")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if (self.task is None) == (self.train is None):
            raise ValueError("give exactly one of data.task (built-in) and data.train (a file)")
        if self.task is not None and self.columns:
            raise ValueError(f"data.columns maps the columns of data.train and data.eval; {self.task} has none to map")
        return self


class EnvironmentConfig(Section):
    """Multi-turn episodes: the model's turns and an environment's replies (tool results), one training row
    per episode with the replies masked from the loss (docs/environments.md)."""

    name: str = Field(description="a registered environment (calculator, tools) or an import path module:Class")
    tools: list[str] = Field(
        [],
        description="tools offered besides the environment's own: built-in (calculator, python) or import paths "
        "module:function (type hints and an Args: docstring give the schema)",
    )
    max_turns: int = Field(4, ge=1, description="model turns per episode; one still running after them is truncated")
    max_tokens: int = Field(
        256,
        gt=0,
        description="tokens of an episode after its prompt, the model's and the replies' (each model turn also at "
        "most rollout.max_new_tokens); an episode that reaches it is truncated",
    )
    truncated_reward: float | None = Field(
        None, description="the reward of a truncated episode (null: the verifiers score its last turn as usual)"
    )
    options: dict[str, Any] = Field({}, description="the environment's own options, e.g. {tool_timeout_s: 5}")


class RolloutConfig(Section):
    engine: dict[str, Any] = Field(
        default_factory=lambda: {"type": "hf"},
        description="the rollout engine: {type: hf | vllm | vllm_server | module:Class, ...its options} "
        "(docs/engines.md); 'hf' generates with the trainer's own model",
    )
    samples_per_prompt: int = Field(8, ge=1, description="G: completions sampled per prompt (one group)")
    max_new_tokens: int = Field(16, gt=0, description="completion length limit in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (also applied to training log-probs)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold")
    max_prompt_tokens: int = Field(
        512, gt=0, description="prompt length limit in tokens, BOS and chat template included"
    )
    prompt_overflow: Literal["error", "truncate_left"] = Field(
        "error",
        description="a prompt over max_prompt_tokens: 'error' stops the run at start-up naming the split "
        "and row (all prompts are checked); 'truncate_left' keeps its last max_prompt_tokens "
        "tokens",
    )
    logp_old: Literal["sampler", "recompute"] = Field(
        "sampler",
        description="where the proximal (old) policy's log-probs come from when a rollout batch makes "
        "several optimizer steps: 'sampler', the engine's behaviour log-probs at the "
        "sampling temperature, before top-p (no extra forward pass; exact with the hf "
        "engine); 'recompute', a no-grad forward of the policy before the update",
    )


class TrainerConfig(Section):
    steps: int = Field(100, gt=0, description="RL steps; each samples one rollout batch")
    prompts_per_step: int = Field(8, gt=0, description="prompts per rollout batch, over all processes")
    mini_batches: int = Field(
        1, gt=0, description="optimizer steps per pass over a rollout batch (whole groups per mini-batch)"
    )
    epochs_per_rollout: int = Field(1, gt=0, description="passes over each rollout batch")
    micro_batch_size: int = Field(
        16, gt=0, description="completions per forward/backward (memory only: the update does not depend on it)"
    )
    micro_batch_tokens: int | None = Field(
        None,
        gt=0,
        description="instead of micro_batch_size in the update: completions per forward/backward "
        "by token budget, longest first, as many as fit in this many prompt + "
        "completion tokens (one at least), so memory follows the lengths (memory only)",
    )
    reward_workers: int = Field(0, ge=0, description="processes running the verifiers (0 = in the trainer)")
    lr: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="after warmup")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(
        1.0,
        ge=0,
        description="gradient clipping by global norm; null or 0 = off "
        "(also DeepSpeed's gradient_clipping, set from "
        "here); a negative norm would reverse the gradient",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="autocast precision of forward and backward, fp32 master weights (accelerate's "
        "mixed_precision; DeepSpeed's bf16/fp16); `rlkit launch` passes it, and a launch "
        "asking for another is refused at start-up. 'bf16' on recent GPUs; on CPUs with "
        "AVX512-BF16 or AMX 1.4-2.4x faster per step (benchmarks/vs_trl.py), at a higher "
        "peak memory (oneDNN keeps a kernel per matmul shape); without them torch emulates "
        "bf16, which can be slower",
    )
    collective_timeout_s: float = Field(
        600.0,
        gt=0,
        description="longest wait of one rank for the others in a collective, and so for "
        "the main process building a cache (warm start); a rank that died or stalled "
        "ends the job within this bound plus ~30 s (torchrun's grace before SIGKILL)",
    )
    seed: int = Field(0, description="seeds data order, sampling and initialisation")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="most recent checkpoints kept on disk")
    resume: bool = Field(True, description="continue from the latest checkpoint in output_dir if one exists")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v  # YAML reads a bare `no` (the value accelerate calls it) as false

    @model_validator(mode="after")
    def _divisible(self):
        if self.prompts_per_step % self.mini_batches:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be divisible by "
                f"mini_batches ({self.mini_batches}): mini-batches hold whole groups"
            )
        return self


class LogConfig(Section):
    # accelerate's tracker names, less "all" (whichever are installed): a recipe names the ones it logs to
    TRACKERS: ClassVar = tuple(t.value for t in LoggerType if t is not LoggerType.ALL)

    every: int = Field(10, gt=0, description="steps between metric lines and completion samples")
    eval_every: int = Field(50, ge=0, description="steps between held-out evaluations (0 = start and end only)")
    samples: int = Field(2, ge=0, description="completions shown, saved and tabled (trackers) at each log step")
    trackers: list[str] = Field(
        ["tensorboard"],
        description=f"accelerate's experiment trackers, any of {', '.join(TRACKERS)} (docs/tracking.md)",
    )
    project: str = Field("rlkit", description="the trackers' project (mlflow: experiment; tensorboard: subfolder)")
    run_name: str | None = Field(None, description="the run's name in the trackers (default: output_dir's folder name)")

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, v):
        unknown = [name for name in v if name not in cls.TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; choose from {', '.join(cls.TRACKERS)}")
        return v


TOTAL = "total"  # eval.metric's name for the weighted total reward


class EvalConfig(Section):
    """The held-out evaluation, run at the start, every ``log.eval_every`` steps and at the end on the
    ``data.eval_size`` held-out prompts (docs/evaluation.md)."""

    metric: str = Field(
        TOTAL,
        description="the held-out metric: 'total' (the weighted total reward, what RL maximises) or the label "
        "of one of the recipe's rewards (its 'name', else the verifier's name)",
    )
    k: int = Field(
        1,
        ge=1,
        description="completions per held-out prompt: 1, the greedy one (eval/score is the metric's mean); "
        "k > 1, k sampled at eval.temperature (eval/score is mean@k, and eval/pass@k is logged)",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the k > 1 completions")
    pass_threshold: float = Field(
        1.0,
        description="a sampled completion passes when its metric score is at least this (pass@k): 1 is full "
        "marks of a verifier scoring in [0, 1]; with metric 'total', the total a correct completion earns",
    )


class Recipe(Section):
    model: ModelConfig = ModelConfig()
    teacher: TeacherConfig | None = Field(None, description="teacher model, for objectives that distill from one")
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    environment: EnvironmentConfig | None = Field(
        None, description="multi-turn episodes in an environment (null: one completion per prompt)"
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(verifier="exact_number")],
        min_length=1,
        description="verifiers and their weights",
    )
    objective: dict[str, Any] = Field(
        default_factory=lambda: {"preset": "grpo"},
        description="preset name plus part overrides (see `rlkit objectives`)",
    )
    trainer: TrainerConfig = TrainerConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str = Field(description="where the run writes metrics, samples, checkpoints and summary.json")

    @property
    def completion_tokens(self) -> int:
        """The most tokens sampled after a prompt: a whole episode's with an environment, else one completion's."""
        return self.rollout.max_new_tokens if self.environment is None else self.environment.max_tokens
