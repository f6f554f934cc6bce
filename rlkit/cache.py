"""Folders rlkit builds once and keeps under ``$RLKIT_CACHE``: the built-in models and warm starts.

Several processes, and several nodes with or without a shared cache, may ask for the same folder at
once. A folder is therefore published whole or not at all:

- it is built in a temporary sibling, ``NAME.tmp-HOST-PID``, and renamed into place;
- a marker file, written last before the rename, is what makes it complete. A folder without the
  marker (left by an interrupted build or an older rlkit) is never used: it is removed and rebuilt;
- when two builds finish, the second rename fails and that copy is removed;
- temporary folders of builds on this host whose process is gone (killed mid-build) are removed.

The build runs in a child process (:func:`run_alone`), so its result does not depend on which rank of
a launch builds it. The trainer calls these on each node's local main process first (accelerate's
``local_main_process_first``), so one process per node builds and the others then read.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

MARKER = ".rlkit-complete"
# Set by `accelerate launch`/torchrun; a build must not see them (see run_alone).
LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def cache_dir() -> Path:
    """Where rlkit keeps built models and warm starts: $RLKIT_CACHE, else ~/.cache/rlkit."""
    return Path(os.environ.get("RLKIT_CACHE", Path.home() / ".cache" / "rlkit"))


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def cached_folder(folder: Path, build: Callable[[Path], None]) -> Path:
    """``folder``, made on a miss by ``build(tmp)``, which fills the empty temporary folder ``tmp``."""
    if is_complete(folder):
        return folder
    _remove_leftovers(folder)
    tmp = folder.with_name(f"{_tmp_prefix(folder)}{os.getpid()}")
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / MARKER).touch()
    try:
        tmp.rename(folder)
    except OSError:  # another process (another node sharing the cache) published it first
        shutil.rmtree(tmp)
    return folder


def run_alone(module_args: list[str]) -> None:
    """``python -m MODULE ARGS...`` as one plain process, whatever the launch: without the launcher's
    variables and with no process group, so ``save_pretrained`` writes everything (once a process
    group exists, transformers writes weights on global rank 0 only) and DDP/DeepSpeed stay out."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("ACCELERATE_")}
    subprocess.run([sys.executable, "-m", *module_args], env=env, check=True)


def _remove_leftovers(folder: Path) -> None:
    """An incomplete ``folder``, and the temporary folders of this host's builds that died (or of this
    process's own failed build)."""
    shutil.rmtree(folder, ignore_errors=True)
    prefix = _tmp_prefix(folder)
    for tmp in folder.parent.glob(prefix + "*"):
        pid = tmp.name[len(prefix) :]  # not a number: another host whose name starts like this one's
        if pid.isdigit() and (int(pid) == os.getpid() or not psutil.pid_exists(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def _tmp_prefix(folder: Path) -> str:
    return f"{folder.name}.tmp-{socket.gethostname()}-"
