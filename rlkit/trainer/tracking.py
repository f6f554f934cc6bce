"""What a run shows and records: progress bar, metrics.jsonl, samples.jsonl, trackers, summary.json.

Only the main process writes. ``metrics.jsonl`` has one JSON object per logged step; on resume, lines
after the checkpoint's step are dropped so the file continues exactly where the checkpoint was; a
fresh run in a folder that holds old records starts them anew.

Trackers are accelerate's (``log.trackers``), set up as :mod:`rlkit.trackers` says (docs/tracking.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from rlkit.environments.base import shown_completion
from rlkit.recipe.schema import LogConfig
from rlkit.trackers import CompletionTable, tracker_setup


class _DropNotice(logging.Filter):
    """Drops a library's log records that contain ``words``."""

    def __init__(self, words: str):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


# Library notices that say nothing about the run, each printed over the progress bar:
# - accelerate's save_state leaves the tied lm_head.weight (a view of the embeddings) out of the model file
#   and says so at every checkpoint; loading re-ties it (a resumed run makes the uninterrupted run's weights).
logging.getLogger("accelerate.utils.other").addFilter(_DropNotice("Removed shared tensor"))
# - accelerate imports DeepSpeed whenever it is installed, and DeepSpeed then names the accelerator it would
#   use (on a machine without CUDA: "Setting accelerator to CPU"), which only matters to a DeepSpeed run.
if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
    logging.getLogger("DeepSpeed").addFilter(_DropNotice("Setting accelerator to"))


class RunLog:
    def __init__(self, accelerator, output_dir: str | Path, total_steps: int, log: LogConfig, config: dict):
        """``log.trackers`` start on the main process, as ``log.project``, the run named ``log.run_name``
        (default: the output folder's name)."""
        self.accelerator = accelerator
        self.dir = Path(output_dir)
        self.main = accelerator.is_main_process
        self.bar = tqdm(total=total_steps, desc="rl", dynamic_ncols=True, disable=not self.main)
        self.hf_bars = hf_logging.is_progress_bar_enabled()
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            # transformers' own bars (a checkpoint's "Writing model shards") would each break this one
            hf_logging.disable_progress_bar()
            if log.trackers:
                run_name = log.run_name or self.dir.resolve().name
                kwargs = {name: tracker_setup(name).init_kwargs(run_name, self.dir) for name in log.trackers}
                accelerator.init_trackers(log.project, config=_flatten(config), init_kwargs=kwargs)

    def start_at(self, step: int) -> None:
        """Start a fresh run (``step`` 0: earlier records in the folder are cleared) or resume one:
        keep the records up to ``step`` (the checkpoint) and move the progress bar there."""
        if not self.main:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.dir / name
            if path.is_file():
                kept = [line for line in path.read_text().splitlines() if step and json.loads(line)["step"] <= step]
                path.write_text("".join(line + "\n" for line in kept))
        self.bar.update(step)

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            {
                "reward": _fmt(metrics.get("reward/mean")),
                "kl": _fmt(metrics.get("objective/kl")),
                "len": _fmt(metrics.get("rollout/len_mean")),
            }
        )

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.accelerator.log(clean, step=step)
        if self.main:
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **clean}) + "\n")

    def samples(self, step: int, rows: list[dict]) -> None:
        if not self.main or not rows:
            return
        with open(self.dir / "samples.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        for row in rows:
            self.write(f"  step {step}  reward {row['reward']:+.2f}  {row['prompt']!r} -> {shown_completion(row)!r}")
        table = CompletionTable.of(step, rows)
        for tracker in self.accelerator.trackers:
            log_table = tracker_setup(tracker.name).log_table
            if log_table is not None:
                log_table(tracker, table)

    def write(self, text: str) -> None:
        if self.main:
            tqdm.write(text)

    def summary(self, summary: dict) -> None:
        if self.main:
            (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        self.bar.close()
        if self.main and self.hf_bars:
            hf_logging.enable_progress_bar()
        self.accelerator.end_training()


def _fmt(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _flatten(config: dict, prefix: str = "") -> dict:
    """Nested recipe -> flat scalars (TensorBoard hparams accept only scalars and strings)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
