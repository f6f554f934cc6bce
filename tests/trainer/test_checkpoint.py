"""A checkpoint counts as complete once its trainer_state.json exists: that file is written whole or not
at all, and on resume a newest checkpoint whose file does not read is passed over for the one before."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlkit.trainer import checkpoint
from rlkit.trainer.checkpoint import STATE_FILE, checkpoint_dir, latest_checkpoint, save_checkpoint


def saved(output_dir, step: int, text: str | bytes | None = None):
    """A checkpoint folder of ``step`` whose trainer state is ``text`` (default: a whole one)."""
    path = checkpoint_dir(output_dir, step)
    path.mkdir(parents=True)
    text = json.dumps({"step": step}) if text is None else text
    (path / STATE_FILE).write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_the_newest_readable_checkpoint_is_resumed_from(tmp_path, capsys):
    saved(tmp_path, 2)
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
    (checkpoint_dir(tmp_path, 3) / "model").mkdir(parents=True)  # interrupted before its trainer state
    truncated = saved(tmp_path, 4, json.dumps({"step": 4, "elapsed": 1.5})[:12])
    not_utf8 = saved(tmp_path, 6, b'{"step": 6\xff}')
    no_step = saved(tmp_path, 8, "[]")
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
    warnings = capsys.readouterr().err.splitlines()
    assert [w.split(": ")[0:2] for w in warnings] == [
        ["warning", f"skipping checkpoint {p}"] for p in (no_step, not_utf8, truncated)
    ]
    assert warnings[0].endswith(f"{STATE_FILE} has no step")
    assert f"{STATE_FILE} is unreadable (" in warnings[1] and f"{STATE_FILE} is unreadable (" in warnings[2]


def test_no_readable_checkpoint_starts_afresh(tmp_path, capsys):
    assert latest_checkpoint(tmp_path) is None
    saved(tmp_path, 2, "")
    assert latest_checkpoint(tmp_path) is None
    assert "skipping checkpoint" in capsys.readouterr().err


class Died(BaseException):
    """The process killed at that point."""


def fake_save_arguments():
    accelerator = SimpleNamespace(
        save_state=lambda path: Path(path).mkdir(parents=True),
        get_state_dict=lambda model: {},
        is_main_process=True,
        unwrap_model=lambda model: model,
        wait_for_everyone=lambda: None,
    )
    model = SimpleNamespace(save_pretrained=lambda path, state_dict: None)
    tokenizer = SimpleNamespace(save_pretrained=lambda path: None)
    return accelerator, model, tokenizer


def test_a_save_killed_before_its_trainer_state_is_in_place_leaves_no_trainer_state(tmp_path, monkeypatch):
    accelerator, model, tokenizer = fake_save_arguments()
    state = {"step": 2, "elapsed": 1.0, "eval_start": {"accuracy": 0.5}}
    save_checkpoint(accelerator, model, tokenizer, tmp_path, 2, state, keep=2)
    assert json.loads((checkpoint_dir(tmp_path, 2) / STATE_FILE).read_text()) == state

    def die(*args):
        raise Died

    monkeypatch.setattr(checkpoint.os, "replace", die)  # killed after writing, before the rename
    with pytest.raises(Died):
        save_checkpoint(accelerator, model, tokenizer, tmp_path, 4, {**state, "step": 4}, keep=2)
    assert not (checkpoint_dir(tmp_path, 4) / STATE_FILE).exists()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
