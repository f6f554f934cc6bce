"""What a run prints besides its own lines: library notices that say nothing about it are dropped, and
no other progress bar is drawn under the `rl` bar."""

import logging
from types import SimpleNamespace

import torch
from accelerate import PartialState
from accelerate.utils.other import clean_state_dict_for_safetensors
from deepspeed.accelerator import real_accelerator
from transformers.utils import logging as hf_logging

from rlkit.trainer.tracking import RunLog


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
    log = RunLog(accelerator, tmp_path, 3, [], {})
    assert not hf_logging.is_progress_bar_enabled()
    log.close()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a user's choice outlives the run
    try:
        RunLog(accelerator, tmp_path, 3, [], {}).close()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
