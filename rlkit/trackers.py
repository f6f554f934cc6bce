"""What rlkit adds to accelerate's experiment trackers (``log.trackers``, docs/tracking.md).

:data:`SETUPS` holds, for the trackers rlkit tests, the modules each needs, how its run is named and where
its local files go, and how it shows the completion table. accelerate's other trackers run with its
defaults and get the scalars only. Nothing here imports a tracker's library until a run starts one, so
``rlkit check`` can ask for the missing ones by name.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rlkit.environments.base import shown_completion


@dataclass(frozen=True)
class CompletionTable:
    """The completions shown at one log step (``RunLog.samples``' rows), one table row each."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("prompt", "completion", "reward", "advantage", "step")
    step: int
    rows: list[list[Any]]

    @classmethod
    def of(cls, step: int, samples: list[dict]) -> CompletionTable:
        """Rows of ``samples``; a multi-turn episode's completion cell is its whole transcript."""
        return cls(step, [[s["prompt"], shown_completion(s), s["reward"], s["advantage"], step] for s in samples])

    def columns(self) -> dict[str, list[Any]]:
        return {name: [row[i] for row in self.rows] for i, name in enumerate(self.COLUMNS)}

    def markdown(self) -> str:
        """A Markdown table (TensorBoard's text tab renders it); ``|`` and line breaks escaped."""

        def cell(value: Any) -> str:
            return str(value).replace("|", "\\|").replace("\n", "<br>")

        lines = [self.COLUMNS, ("---",) * len(self.COLUMNS), *self.rows]
        return "\n".join("| " + " | ".join(map(cell, line)) + " |" for line in lines)


def _no_kwargs(run_name: str, output_dir: Path) -> dict:
    return {}


@dataclass(frozen=True)
class TrackerSetup:
    """What rlkit adds to one of accelerate's trackers. ``modules``: what it imports (``rlkit check`` names
    a missing one and ``install``); ``init_kwargs(run_name, output_dir)``: its ``init_trackers`` kwargs,
    which name the run and place its local files; ``log_table(tracker, table)``: how it shows the
    completion table (None: scalars only)."""

    modules: tuple[str, ...]
    install: str
    init_kwargs: Callable[[str, Path], dict] = _no_kwargs
    log_table: Callable[[Any, CompletionTable], None] | None = None


def _wandb_kwargs(run_name: str, output_dir: Path) -> dict:
    # wandb.init(dir=...) would override the user's WANDB_DIR; WANDB_MODE (offline, disabled) is wandb's own
    return {"name": run_name} | ({} if os.environ.get("WANDB_DIR") else {"dir": str(output_dir)})


def _mlflow_kwargs(run_name: str, output_dir: Path) -> dict:
    """Without MLFLOW_TRACKING_URI, the run's records go to a sqlite store in the output folder (MLflow 3's
    default kind of store, which would be ./mlflow.db) and its artifacts beside it, in mlruns/."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return {"run_name": run_name}
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(output_dir / 'mlflow.db').resolve()}")
    return {"run_name": run_name, "logging_dir": str((output_dir / "mlruns").resolve())}


def _trackio_kwargs(run_name: str, output_dir: Path) -> dict:
    # trackio keeps every project in TRACKIO_DIR (default ~/.cache/huggingface/trackio, where `trackio show`
    # looks), read once at its import: a run cannot move it, so there it stays
    return {"name": run_name}


def _tensorboard_table(tracker, table: CompletionTable) -> None:
    tracker.log({"completions": table.markdown()}, step=table.step)  # a string: accelerate adds it as text


def _wandb_table(tracker, table: CompletionTable) -> None:
    tracker.log_table("completions", columns=list(table.COLUMNS), data=table.rows, step=table.step)


def _trackio_table(tracker, table: CompletionTable) -> None:
    import trackio

    tracker.log({"completions": trackio.Table(columns=list(table.COLUMNS), data=table.rows)}, step=table.step)


def _mlflow_table(tracker, table: CompletionTable) -> None:
    import mlflow

    # one artifact per step: appending to one (log_table's way with an existing file) downloads it each time
    run_id = tracker.tracker.info.run_id
    mlflow.log_table(table.columns(), artifact_file=f"completions/step_{table.step:06d}.json", run_id=run_id)


SETUPS = {
    "tensorboard": TrackerSetup(("tensorboard",), "pip install tensorboard", log_table=_tensorboard_table),
    "wandb": TrackerSetup(("wandb",), "pip install 'rlkit[wandb]'", _wandb_kwargs, _wandb_table),
    "trackio": TrackerSetup(("trackio",), "pip install 'rlkit[trackio]'", _trackio_kwargs, _trackio_table),
    "mlflow": TrackerSetup(
        ("mlflow", "sqlalchemy", "alembic"), "pip install 'rlkit[mlflow]'", _mlflow_kwargs, _mlflow_table
    ),
}


def tracker_setup(name: str) -> TrackerSetup:
    """rlkit's setup of tracker ``name``; accelerate's other trackers are each their own module and package."""
    return SETUPS.get(name) or TrackerSetup((name,), f"pip install {name}")


def missing_library(name: str) -> str | None:
    """Why tracker ``name`` cannot start here (a module it needs is not installed), or None. accelerate
    itself would drop it with a debug-level line only, and the run would go on without it."""
    setup = tracker_setup(name)
    missing = [module for module in setup.modules if importlib.util.find_spec(module) is None]
    return f"{name} needs the {missing[0]} module, which is not installed: {setup.install}" if missing else None
