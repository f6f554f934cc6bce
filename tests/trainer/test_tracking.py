"""What a run prints besides its own lines (library notices that say nothing about it are dropped, and no
other progress bar is drawn under the `rl` bar), and what it records in each tracker: one 3-step run with
tensorboard, wandb (offline), trackio and mlflow, read back with each library's own reader where it has one.

The tracker libraries are imported inside the tests: the vLLM virtualenv collects this file without them."""

import json
import logging
import os
import re
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState
from accelerate.utils.other import clean_state_dict_for_safetensors
from deepspeed.accelerator import real_accelerator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers.utils import logging as hf_logging

from rlkit.cli import main
from rlkit.recipe.schema import LogConfig
from rlkit.trackers import SETUPS, CompletionTable, tracker_setup
from rlkit.trainer.tracking import RunLog

ROOT = Path(__file__).parents[2]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def test_checkpoint_save_does_not_report_the_tied_weight(caplog):
    PartialState()  # accelerate's logger needs it
    tied = torch.zeros(2, 2)
    with caplog.at_level(logging.WARNING):
        state = clean_state_dict_for_safetensors({"embed.weight": tied, "lm_head.weight": tied})
    assert list(state) == ["embed.weight"]  # what save_state does at every checkpoint
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_deepspeed_does_not_name_its_accelerator_outside_a_deepspeed_run(monkeypatch):
    records = Records()  # DeepSpeed's logger does not propagate: caplog would not see it
    logging.getLogger("DeepSpeed").addHandler(records)
    monkeypatch.setattr(real_accelerator, "ds_accelerator", None)  # detect again, as on first import
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    try:
        real_accelerator.get_accelerator()
    finally:
        logging.getLogger("DeepSpeed").removeHandler(records)
    assert not [m for m in records.messages if "Setting accelerator to" in m]


def test_transformers_bars_are_off_while_the_rl_bar_is_up(tmp_path):
    accelerator = SimpleNamespace(is_main_process=True, init_trackers=None, end_training=lambda: None)
    hf_logging.enable_progress_bar()  # as a fresh process has it (a Trainer built and never run leaves it off)
    log = RunLog(accelerator, tmp_path, 3, LogConfig(trackers=[]), {})
    assert not hf_logging.is_progress_bar_enabled()
    log.close()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a user's choice outlives the run
    try:
        RunLog(accelerator, tmp_path, 3, LogConfig(trackers=[]), {}).close()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- what rlkit check accepts


def test_check_passes_with_the_four_tested_trackers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's output_dir is only probed there
    assert main(["check", QUICKSTART, "log.trackers=[wandb,trackio,mlflow,tensorboard]"]) == 0, capsys.readouterr()


def test_an_unknown_tracker_is_refused_with_the_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", QUICKSTART, "log.trackers=[tensorboard,wandbb]"]) == 2
    assert capsys.readouterr().err == (
        "error: override 'log.trackers=[tensorboard,wandbb]': log.trackers: Value error, unknown tracker "
        "'wandbb'; choose from aim, tensorboard, wandb, trackio, comet_ml, mlflow, clearml, dvclive, swanlab\n"
    )


@pytest.mark.parametrize(
    "tracker, module, extra",
    [
        ("wandb", "wandb", "wandb"),
        ("trackio", "trackio", "trackio"),
        ("mlflow", "mlflow", "mlflow"),
        ("mlflow", "sqlalchemy", "mlflow"),
    ],
)
def test_a_tracker_whose_library_is_missing_is_refused_with_its_extra(
    tracker, module, extra, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # what `import` and find_spec see for a missing module
    override = f"log.trackers=[tensorboard,{tracker}]"
    assert main(["check", QUICKSTART, override]) == 2
    assert capsys.readouterr().err == (
        f"error: override {override!r}: log.trackers.1: {tracker} needs the {module} module, which is not "
        f"installed: pip install 'rlkit[{extra}]'\n"
    )


def test_each_install_hint_names_an_extra_of_the_package():
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = [re.fullmatch(r"pip install 'rlkit\[(\w+)\]'", s.install) for s in SETUPS.values()]
    named = [m.group(1) for m in extras if m]
    assert named == ["wandb", "trackio", "mlflow"]
    for extra in named:
        assert re.search(rf"^{extra} = \[", pyproject, flags=re.M), extra


# ---------------------------------------------------------------- how trackers are started


class Recorder(SimpleNamespace):
    def init_trackers(self, project_name, config=None, init_kwargs=None):
        self.started = (project_name, config, init_kwargs)


def started(output_dir: Path, log: LogConfig, config: dict) -> tuple:
    accelerator = Recorder(is_main_process=True, end_training=lambda: None)
    RunLog(accelerator, output_dir, 3, log, config).close()
    return accelerator.started


def test_runs_are_named_after_the_output_folder_and_write_there(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "grpo-seed0"
    log = LogConfig(trackers=["tensorboard", "wandb", "trackio"])
    assert started(out, log, {"trainer": {"lr": 1e-4, "betas": [0.9, 0.99]}}) == (
        "rlkit",
        {"trainer.lr": 1e-4, "trainer.betas": "[0.9, 0.99]"},
        {"tensorboard": {}, "wandb": {"name": "grpo-seed0", "dir": str(out)}, "trackio": {"name": "grpo-seed0"}},
    )


def test_the_recipe_names_project_and_run_and_the_user_places_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    log = LogConfig(trackers=["wandb"], project="addition", run_name="lr-1e-4")
    assert started(tmp_path, log, {}) == ("addition", {}, {"wandb": {"name": "lr-1e-4"}})


def test_mlflow_logs_where_the_user_sets_its_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracker_setup("mlflow").init_kwargs("run", tmp_path) == {"run_name": "run"}  # no local store


def test_the_tensorboard_table_escapes_cell_breaks():
    table = CompletionTable.of(5, [{"prompt": "a|b", "completion": "x\ny", "reward": 1.0, "advantage": -0.5}])
    assert table.markdown() == (
        "| prompt | completion | reward | advantage | step |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| a\\|b | x<br>y | 1.0 | -0.5 | 5 |"
    )


# ---------------------------------------------------------------- one run, four trackers

TINY = [
    "model.warm_start=null",
    "trainer.prompts_per_step=2",
    "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=3",
    "data.eval_size=4",
    "trainer.steps=3",
    "log.every=2",  # log steps 2 and 3 (the last)
    "log.eval_every=0",
    "log.project=rlkit-test",
]


@dataclass
class TrackedRun:
    out: Path
    trackio_dir: Path
    metrics: dict[int, dict[str, float]]  # metrics.jsonl, the lines of each step merged
    rows: dict[int, list[list]]  # samples.jsonl as completion-table rows, by step


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> TrackedRun:
    root = tmp_path_factory.mktemp("tracked")
    out = root / "tiny-run"
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "TRACKIO_DIR": str(root / "trackio"),
        "RLKIT_CACHE": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    for unset in ("WANDB_DIR", "MLFLOW_TRACKING_URI"):  # rlkit's defaults: under output_dir
        env.pop(unset, None)
    command = [sys.executable, "-m", "rlkit.cli", "train", QUICKSTART, f"output_dir={out}", *TINY]
    command.append("log.trackers=[wandb,trackio,mlflow,tensorboard]")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics: dict[int, dict[str, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        metrics.setdefault(record.pop("step"), {}).update(record)
    rows: dict[int, list[list]] = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        rows.setdefault(s["step"], []).append([s["prompt"], s["completion"], s["reward"], s["advantage"], s["step"]])
    assert sorted(metrics) == [0, 2, 3] and sorted(rows) == [2, 3] and all(len(r) == 2 for r in rows.values())
    return TrackedRun(out, root / "trackio", metrics, rows)


COLUMNS = ["prompt", "completion", "reward", "advantage", "step"]


def test_tensorboard_has_the_scalars_and_a_text_table(run):
    events = EventAccumulator(str(run.out / "rlkit-test"))  # accelerate's folder: the project's name
    events.Reload()
    for key in ("reward/mean", "rollout/len_mean", "train/lr", "eval/score"):
        expected = [(step, m[key]) for step, m in run.metrics.items() if key in m]
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), key  # float32
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("completions/text_summary")}
    assert sorted(texts) == [2, 3]
    for step, rows in run.rows.items():
        lines = texts[step].splitlines()
        assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
        assert lines[2:] == ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def wandb_records(path: Path):
    """The protobuf records of a .wandb file, which wandb (0.31) writes and no longer reads in Python: a
    7-byte header (":W&B", magic, version), then LevelDB's log format: 32 KiB blocks of chunks, each a
    4-byte CRC, a 2-byte length and a 1-byte type (1 whole record, 2/3/4 its first/middle/last part)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, record = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        record += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(record)
            record = b""


def test_wandb_offline_run_has_the_metrics_and_the_table(run):
    (run_dir,) = (run.out / "wandb").glob("offline-run-*")
    records = list(wandb_records(next(run_dir.glob("run-*.wandb"))))
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (header.project, header.display_name) == ("rlkit-test", "tiny-run")
    history: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            history.setdefault(r.history.step.num, {}).update(items)
    assert sorted(history) == sorted(run.metrics)
    for step, metrics in run.metrics.items():
        assert {k: history[step][k] for k in metrics} == metrics, step
    for step, rows in run.rows.items():
        table = json.loads((run_dir / "files" / history[step]["completions/path"]).read_text())
        assert table == {"columns": COLUMNS, "data": rows}, step


def test_trackio_project_has_the_metrics_and_the_table(run):
    with sqlite3.connect(run.trackio_dir / "rlkit-test.db") as db:  # trackio's store: one sqlite file a project
        logged = db.execute("SELECT step, metrics FROM metrics WHERE run_name = 'tiny-run' ORDER BY id").fetchall()
        (config,) = db.execute("SELECT config FROM configs WHERE run_name = 'tiny-run'").fetchone()
    assert json.loads(config)["trainer.steps"] == 3
    history: dict[int, dict] = {}
    for step, values in logged:
        history.setdefault(step, {}).update(json.loads(values))
    for step, metrics in run.metrics.items():
        assert {k: history[step][k] for k in metrics} == metrics, step
    for step, rows in run.rows.items():
        expected = [dict(zip(COLUMNS, row)) for row in rows]
        assert history[step]["completions"] == {"_type": "trackio.table", "_value": expected}, step


def test_mlflow_store_in_the_output_folder_has_the_metrics_and_the_tables(run, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run.out / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("rlkit-test").experiment_id])
    assert logged.info.run_name == "tiny-run" and logged.data.params["trainer.steps"] == "3"
    assert Path(logged.info.artifact_uri).is_relative_to(run.out / "mlruns")
    for key in ("reward/mean", "rollout/len_mean", "train/lr", "eval/score"):
        expected = [(step, m[key]) for step, m in run.metrics.items() if key in m]
        history = client.get_metric_history(logged.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == expected, key
    for step, rows in run.rows.items():
        path = client.download_artifacts(logged.info.run_id, f"completions/step_{step:06d}.json", str(tmp_path))
        assert json.loads(Path(path).read_text()) == {"columns": COLUMNS, "data": rows}, step
