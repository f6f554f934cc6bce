"""rlkit.plot on hand-written run folders (no training)."""

import json

import matplotlib.image
import pytest

from rlkit.cli import main
from rlkit.plot import plot_runs, read_series, run_labels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path, lines, objective=None):
    """A run folder with ``metrics.jsonl`` from ``lines`` (dicts, or raw strings written as they are)."""
    path.mkdir()
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (path / "metrics.jsonl").write_text(text + "\n")
    if objective is not None:
        (path / "summary.json").write_text(json.dumps({"steps": 20, "objective": objective}))
    return path


@pytest.fixture
def run(tmp_path):
    return write_run(
        tmp_path / "run_a",
        [
            {"step": 0, "eval/score": 0.25, "eval/reward": 0.25},
            {"step": 10, "reward/mean": 0.5, "objective/kl": 0.01},
            "",
            {"step": 20, "reward/mean": 0.625},
            {"step": 20, "eval/score": 0.5, "eval/reward": 0.5},
            '{"step": 30, "reward/me',  # a line still being written
        ],
        objective="ctpo",
    )


def test_read_series_returns_the_written_values(run):
    assert read_series(run, "eval/score") == ([0, 20], [0.25, 0.5])
    assert read_series(run, "reward/mean") == ([10, 20], [0.5, 0.625])
    assert read_series(run, "missing/key") == ([], [])


def test_read_series_needs_a_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_series(tmp_path, "reward/mean")


def test_runs_are_labelled_by_folder(run, tmp_path):
    """Two runs of one preset get their folders' names, with the objective when summary.json has one."""
    same_preset = write_run(tmp_path / "run_b", [{"step": 0, "reward/mean": 0.1}], objective="ctpo")
    unfinished = write_run(tmp_path / "run_c", [{"step": 0, "reward/mean": 0.1}])
    assert run_labels([run, same_preset, unfinished]) == ["run_a (ctpo)", "run_b (ctpo)", "run_c"]
    assert run_labels([run]) == ["run_a (ctpo)"]
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed1").mkdir()
    twins = [
        write_run(tmp_path / seed / "quickstart", [{"step": 0, "reward/mean": 0.1}]) for seed in ("seed0", "seed1")
    ]
    assert run_labels(twins) == ["seed0/quickstart", "seed1/quickstart"]


def test_plot_writes_a_png(run, tmp_path):
    other = write_run(tmp_path / "run_b", [{"step": 0, "eval/score": 0.1}, {"step": 5, "reward/mean": 0.2}])
    out = plot_runs([run, other], tmp_path / "plots" / "curves.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    height, width, _ = matplotlib.image.imread(out).shape  # decodes as a whole
    assert width > height > 100


def test_cli_plot(run, tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert main(["plot", str(run), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert main(["plot", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
