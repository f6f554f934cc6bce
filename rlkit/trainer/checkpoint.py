"""Checkpoints: a Hugging Face model folder plus accelerate's full training state.

Layout of ``OUTPUT_DIR/checkpoints/step-000050/``::

    model/               save_pretrained + tokenizer: loads with AutoModelForCausalLM.from_pretrained;
                         with model.lora, peft's adapter folder (PeftModel.from_pretrained on the base
                         model; `rlkit export RUN` merges it into a plain model folder)
    state/               accelerator.save_state: model, optimizer, scheduler, RNG of every process
    trainer_state.json   step, elapsed seconds, held-out metrics at the start of RL; written last and
                         atomically, so a folder without it is an interrupted save and is ignored (one
                         whose file does not parse, left by an older rlkit, is skipped with a warning)

The model folder and trainer state are written by the global main process, the state by every rank
(each writes its own RNG state, and under DeepSpeed its own shards). Resuming therefore needs an
``output_dir`` that every node sees: rank 0 picks the checkpoint and a run whose ranks cannot all read
it stops at start-up (:func:`agreed_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from accelerate.utils import broadcast_object_list, gather_object
from peft import AutoPeftModelForCausalLM, PeftConfig
from transformers import AutoTokenizer

STATE_FILE = "trainer_state.json"


class CheckpointNotShared(RuntimeError):
    """Raised on every rank when some rank cannot read the checkpoint rank 0 resumes from."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose trainer state reads, or None. A newer one whose
    ``trainer_state.json`` does not (truncated by a run killed while an older rlkit wrote it in place)
    is skipped, with a warning naming it."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    for path in reversed(done):
        problem = _unreadable(path / STATE_FILE)
        if problem is None:
            return path
        print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
    return None


def _unreadable(state_file: Path) -> str | None:
    """Why a trainer state cannot be resumed from, or None."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:  # ValueError: invalid JSON, or bytes that are not UTF-8
        return f"{STATE_FILE} is unreadable ({e})"
    return None if isinstance(state, dict) and isinstance(state.get("step"), int) else f"{STATE_FILE} has no step"


def agreed_checkpoint(accelerator, output_dir: str | Path) -> Path | None:
    """The checkpoint every rank resumes from: rank 0's newest complete one, or None (a fresh start).

    Rank 0 decides, and each rank looks for that step in its own ``output_dir``: ranks deciding alone
    would resume on one node and start afresh on another, then hang in their first collective. A rank
    whose ``trainer_state.json`` is missing or differs from rank 0's (another run's folder) cannot
    resume, and then every rank raises :class:`CheckpointNotShared`.
    """
    latest = latest_checkpoint(output_dir) if accelerator.is_main_process else None
    chosen = [latest.name, (latest / STATE_FILE).read_text()] if latest else [None, None]
    name, state = broadcast_object_list(chosen)
    if name is None:
        return None
    path = Path(output_dir) / "checkpoints" / name
    readable = (path / STATE_FILE).is_file() and (path / STATE_FILE).read_text() == state
    blind = [rank for rank, ok in enumerate(gather_object([readable])) if not ok]
    if blind:
        raise CheckpointNotShared(
            f"rank 0 resumes from checkpoints/{name} of its output_dir, but rank(s) {blind} do not find that "
            f"checkpoint in theirs: resuming on several nodes needs an output_dir shared by every node "
            f"(or trainer.resume=false to start afresh)"
        )
    return path


def save_checkpoint(accelerator, model, tokenizer, output_dir, step: int, trainer_state: dict, keep: int) -> Path:
    path = checkpoint_dir(output_dir, step)
    accelerator.save_state(str(path / "state"))
    # get_state_dict gathers ZeRO-3 / FSDP shards; every rank must call it
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path / "model", state_dict=state_dict)
        tokenizer.save_pretrained(path / "model")
        write_atomically(path / STATE_FILE, json.dumps(trainer_state, indent=2))  # marks the checkpoint complete
        _prune(Path(output_dir) / "checkpoints", keep)
    accelerator.wait_for_everyone()
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all, whenever the process dies: the text goes to a temporary name in
    the same folder, is flushed to disk, and is renamed over ``path`` (atomic within a file system); then
    the folder is flushed, so that the rename itself survives a crash of the machine."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``path``; returns its trainer state."""
    accelerator.load_state(str(path / "state"))
    return json.loads((path / STATE_FILE).read_text())


def export_merged(output_dir: str | Path, out: str | Path) -> Path:
    """Merge the LoRA adapter of the run's latest checkpoint into its base model (peft's
    ``merge_and_unload``: W + (lora_alpha / r) * B A) and save model and tokenizer at ``out``, a plain
    Hugging Face folder. Returns the checkpoint merged."""
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{output_dir}: no complete checkpoint (checkpoints/step-*/{STATE_FILE})")
    adapter = checkpoint / "model"
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"{adapter} is a full model, not a LoRA adapter: it loads with from_pretrained as it is")
    base = PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
    if not Path(base).is_dir():
        raise FileNotFoundError(f"{adapter}: its base model folder {base} (adapter_config.json) no longer exists")
    AutoPeftModelForCausalLM.from_pretrained(adapter, dtype="auto").merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    return checkpoint


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
