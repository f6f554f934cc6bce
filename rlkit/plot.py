"""Learning curves of one or more runs: held-out accuracy and training reward against step (``rlkit plot``)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PANELS = (("eval/accuracy", "held-out accuracy"), ("reward/mean", "training reward"))


def read_series(run_dir: str | Path, key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` in the run's ``metrics.jsonl``, in file order; lines without the key,
    blank lines and unreadable lines (a run still writing) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a run folder?)")
    steps, values = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and key in record and "step" in record:
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def run_label(run_dir: str | Path) -> str:
    """The run's objective from ``summary.json`` if it has one, else the folder name."""
    summary = Path(run_dir) / "summary.json"
    if summary.is_file():
        objective = json.loads(summary.read_text()).get("objective")
        if objective:
            return str(objective)
    return Path(run_dir).resolve().name


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write a PNG with one panel per entry of :data:`PANELS` and one curve per run; returns its path."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, PANELS):
        for run_dir in run_dirs:
            steps, values = read_series(run_dir, key)
            ax.plot(steps, values, marker="o", markersize=3, label=run_label(run_dir))
        ax.set(title=title, xlabel="step", ylabel=key)
        ax.grid(alpha=0.3)
    axes[0].legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
