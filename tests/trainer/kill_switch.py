"""A verifier that stands for a SIGKILL from outside at a chosen point of a run, so that a test of resuming
needs no race between its own clock and the run's: named in a recipe with weight 0
(``{verifier: tests/trainer/kill_switch.py:dies_once_file_exists, weight: 0.0}``), it scores nothing, and
kills its own process as soon as it is called after the file named by $KILL_SWITCH_FILE exists."""

import os
import signal
from pathlib import Path


def dies_once_file_exists(prompts, completions, **_):
    armed = os.environ.get("KILL_SWITCH_FILE")
    if armed and Path(armed).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return [0.0] * len(completions)
