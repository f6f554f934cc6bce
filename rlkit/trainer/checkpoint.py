"""Checkpoints: a Hugging Face model folder plus accelerate's full training state.

Layout of ``OUTPUT_DIR/checkpoints/step-000050/``::

    model/               save_pretrained + tokenizer: loads with AutoModelForCausalLM.from_pretrained;
                         with model.lora, peft's adapter folder (PeftModel.from_pretrained on the base
                         model; `rlkit export RUN` merges it into a plain model folder)
    state/               accelerator.save_state: model, optimizer, scheduler, RNG of every process
    trainer_state.json   step, elapsed seconds, held-out metrics at the start of RL; written last,
                         so a folder without it is an interrupted save and is ignored

The model folder and trainer state are written by the global main process, the state by every rank
(each writes its own RNG state, and under DeepSpeed its own shards). Resuming therefore needs an
``output_dir`` that every node sees: rank 0 picks the checkpoint and a run whose ranks cannot all read
it stops at start-up (:func:`agreed_checkpoint`).
"""

from __future__ import annotations

import json
import shutil
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
    """The newest complete checkpoint, or None."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


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
            f"(or trainer.resume=false to start afresh)")
    return path


def save_checkpoint(accelerator, model, tokenizer, output_dir, step: int, trainer_state: dict, keep: int) -> Path:
    path = checkpoint_dir(output_dir, step)
    accelerator.save_state(str(path / "state"))
    # get_state_dict gathers ZeRO-3 / FSDP shards; every rank must call it
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path / "model", state_dict=state_dict)
        tokenizer.save_pretrained(path / "model")
        (path / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        _prune(Path(output_dir) / "checkpoints", keep)
    accelerator.wait_for_everyone()
    return path


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
    base = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if not Path(base).is_dir():
        raise FileNotFoundError(f"{adapter}: its base model folder {base} (adapter_config.json) no longer exists")
    AutoPeftModelForCausalLM.from_pretrained(adapter, dtype="auto").merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    return checkpoint


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
