"""Learning curves of one or more runs: the held-out metric and the training reward against step (``rlkit plot``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PANELS = (("eval/score", "held-out metric"), ("reward/mean", "training reward"))


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


def _summary(path: Path) -> dict:
    """The run's summary.json, or {} while the run has not finished."""
    summary = path / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """One legend entry per run: its folder, relative to the folder all the runs are in (so distinct
    folders get distinct labels; two runs of one preset share their objective), then the objective from
    ``summary.json`` if it has one."""
    paths = [Path(d).resolve() for d in run_dirs]
    common = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    labels = []
    for path in paths:
        label = path.relative_to(common).as_posix() if path != common else path.name
        objective = _summary(path).get("objective")
        labels.append(f"{label} ({objective})" if objective else label)
    return labels


def metric_label(run_dirs: list[str | Path]) -> str:
    """What ``eval/score`` is in these runs, from their summary.json: ``exact_number, greedy`` or
    ``exact_number, mean@4`` (docs/evaluation.md); runs that differ are listed with " / ", unfinished runs
    (no summary yet) are not known and add nothing."""
    records = [_summary(Path(d)).get("eval_end") for d in run_dirs]
    names = [f"{r['metric']}, " + ("greedy" if r["k"] == 1 else f"mean@{r['k']}") for r in records if r]
    return " / ".join(dict.fromkeys(names)) or "eval/score"


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write a PNG with one panel per entry of :data:`PANELS` and one curve per run; returns its path. The
    held-out panel's y-axis names the runs' metric (:func:`metric_label`)."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4), constrained_layout=True)
    labels = run_labels(run_dirs)
    ylabels = {"eval/score": metric_label(run_dirs)}
    for ax, (key, title) in zip(axes, PANELS):
        for run_dir, label in zip(run_dirs, labels):
            steps, values = read_series(run_dir, key)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="step", ylabel=ylabels.get(key, key))
        ax.grid(alpha=0.3)
    axes[0].legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
