"""`rlkit launch`: config names resolve to launch/, and the accelerate command it builds (checked without
running it) carries the recipe's precision, a process count, and on a machine without CUDA the flags a CPU
run needs; FSDP is refused there. One real 2-process CPU run goes through it end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rlkit.launcher
from rlkit.cli import main
from rlkit.launcher import CONFIGS, LaunchError, accelerate_command, resolve_config
from tests.ports import free_port

ROOT = Path(__file__).parents[2]
RLKIT = str(Path(sys.executable).parent / "rlkit")
SHIPPED = ["ddp", "fsdp2", "multinode_zero3", "zero2", "zero3", "zero3_offload"]
NO_LAYOUT = dict.fromkeys(["num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port"])


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_shipped_configs_resolve_by_name_and_files_by_path(tmp_path):
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == SHIPPED
    for name in SHIPPED:
        assert resolve_config(name) == CONFIGS / f"{name}.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    assert resolve_config(str(own)) == own
    with pytest.raises(LaunchError, match="'zero4': no such file, and not one of ddp, fsdp2, multinode_zero3"):
        resolve_config("zero4")


def test_cpu_ddp_gets_gloo_processes_without_precision_or_dynamo():
    command, env = accelerate_command(
        resolve_config("ddp"), ["r.yaml", "trainer.steps=3"], "no", 0, NO_LAYOUT, [], {"PATH": "/bin"}
    )
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert flag(command, "--config_file") == str(CONFIGS / "ddp.yaml")
    assert flag(command, "--num_processes") == "2" and flag(command, "--mixed_precision") == "no"
    assert flag(command, "--dynamo_backend") == "no" and "--multi_gpu" in command  # not --cpu: one process
    assert command[-5:] == ["-m", "rlkit.cli", "train", "r.yaml", "trainer.steps=3"]
    assert env == {"PATH": "/bin", "ACCELERATE_USE_CPU": "true"}


def test_cpu_deepspeed_never_gets_accelerate_use_cpu():
    """ACCELERATE_USE_CPU would silently turn DeepSpeed into plain DDP, even when the caller had it set."""
    command, env = accelerate_command(
        resolve_config("zero3"), ["r.yaml"], "no", 0, NO_LAYOUT, [], {"ACCELERATE_USE_CPU": "true"}
    )
    assert "ACCELERATE_USE_CPU" not in env and "--multi_gpu" not in command
    assert flag(command, "--num_processes") == "2" and flag(command, "--dynamo_backend") == "no"


def test_gpu_counts_processes_per_gpu_and_machine_and_passes_the_rest():
    command, env = accelerate_command(resolve_config("ddp"), ["r.yaml"], "bf16", 4, NO_LAYOUT, [], {})
    assert flag(command, "--num_processes") == "4" and flag(command, "--mixed_precision") == "bf16"
    assert "--dynamo_backend" not in command and "--multi_gpu" not in command and env == {}
    layout = {**NO_LAYOUT, "machine_rank": 1, "main_process_ip": "10.0.0.1", "main_process_port": 29400}
    command, _ = accelerate_command(
        resolve_config("multinode_zero3"), ["r.yaml"], "bf16", 8, layout, ["--gpu_ids", "0,1,2,3,4,5,6,7"], {}
    )
    assert flag(command, "--num_processes") == "16"  # the config's 2 machines x 8 GPUs
    assert flag(command, "--machine_rank") == "1" and flag(command, "--main_process_ip") == "10.0.0.1"
    assert flag(command, "--main_process_port") == "29400" and flag(command, "--gpu_ids") == "0,1,2,3,4,5,6,7"
    command, _ = accelerate_command(
        resolve_config("multinode_zero3"), ["r.yaml"], "no", 2, {**NO_LAYOUT, "num_machines": 3}, [], {}
    )
    assert flag(command, "--num_processes") == "6" and flag(command, "--num_machines") == "3"
    command, _ = accelerate_command(
        resolve_config("zero2"), ["r.yaml"], "no", 8, {**NO_LAYOUT, "num_processes": 3}, [], {}
    )
    assert flag(command, "--num_processes") == "3"


def test_cli_passes_recipe_precision_overrides_and_extra_flags(monkeypatch, capsys):
    launched = {}
    monkeypatch.setattr(rlkit.launcher, "exec_launch", lambda command, env: launched.update(command=command))
    main(
        [
            "launch",
            "zero2",
            "recipes/quickstart.yaml",
            "trainer.mixed_precision=bf16",
            "trainer.steps=3",
            "--num_processes",
            "3",
            "--",
            "--gpu_ids",
            "0,1,2",
        ]
    )
    command = launched["command"]
    assert flag(command, "--mixed_precision") == "bf16" and flag(command, "--num_processes") == "3"
    assert flag(command, "--gpu_ids") == "0,1,2"
    assert command[command.index("train") + 1 :] == [
        "recipes/quickstart.yaml",
        "trainer.mixed_precision=bf16",
        "trainer.steps=3",
    ]


def test_cli_refuses_fsdp_on_cpu_and_a_bad_recipe_before_launching(monkeypatch, capsys):
    monkeypatch.setattr(rlkit.launcher, "exec_launch", lambda command, env: pytest.fail("launched"))
    assert main(["launch", "fsdp2", "recipes/quickstart.yaml"]) == 2
    assert "fsdp2.yaml: accelerate's FSDP on a CPU neither shards nor synchronises" in capsys.readouterr().err
    assert main(["launch", "ddp", "recipes/quickstart.yaml", "trainer.mixed_precision=fp8"]) == 2
    assert "trainer.mixed_precision" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # flags after -- are accelerate's, so only for rlkit launch
        main(["check", "recipes/quickstart.yaml", "--", "--num_processes", "2"])
    assert "flags after -- are for rlkit launch, not rlkit check" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_processes_train_through_rlkit_launch_ddp(tmp_path, shared_cache):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            RLKIT,
            "launch",
            "ddp",
            "recipes/quickstart.yaml",
            "model.warm_start=null",
            "log.trackers=[]",
            "trainer.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "data.eval_size=8",
            "log.eval_every=0",
            "log.every=1",
            "log.samples=4",
            "trainer.steps=2",
            f"output_dir={out}",
            "--main_process_port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, "RLKIT_CACHE": str(shared_cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # the main process logs its own prompts: 2 of the step's 4 on each of 2 ranks (one process: 4)
    assert [s["step"] for s in samples] == [1, 1, 2, 2]
    assert (out / "checkpoints" / "step-000002" / "model" / "config.json").is_file()
