"""The ``vllm_server`` engine: rollouts from a vLLM OpenAI-compatible server in another process.

For runs where generation has its own GPUs (give ``url``), or, with no ``url``, a server this engine starts
on this machine and stops at the end. Every HTTP call has a deadline (``timeout_s``) and fails with
:class:`EngineUnavailable`, naming the server and the call that did not answer.

Weights reach the server one of two ways (``weight_transfer``):

- ``nccl`` (GPUs): vLLM's NCCL weight-transfer engine, through TRL's ``VLLMClient``; start the server with
  ``--weight-transfer-config '{"backend": "nccl"}'``.
- ``files`` (any platform; the CPU path): the trainer writes a safetensors file into ``sync_dir``, a folder
  the server can read, and the server's workers reload it (:class:`WorkerExtension`; the server runs
  with ``VLLM_SERVER_DEV_MODE=1`` and ``--worker-extension-cls rlkit.rollout.vllm_server.WorkerExtension``).

Only rank 0 pushes weights; with one shared server every rank waits for that push before it samples.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from rlkit.rollout.engine import Completions, Engine, EngineOptions, EngineSetup, Sampling
from rlkit.rollout.vllm import INSTALL, checkpoint_state, free_port, repack_cpu_output_layer

if TYPE_CHECKING:
    from trl.generation.vllm_client import VLLMClient


class EngineUnavailable(RuntimeError):
    """The rollout server did not answer a call in time, or refused it."""


class VLLMServerOptions(EngineOptions):
    url: str | None = Field(
        None,
        description="the server's address, http://host:port; null: start one on this "
        "machine for the run (each rank its own)",
    )
    timeout_s: float = Field(
        300.0, gt=0, description="deadline of every call to the server (generation, weight sync, probe), seconds"
    )
    startup_timeout_s: float = Field(600.0, gt=0, description="how long a server started here may take to answer")
    weight_transfer: Literal["files", "nccl"] = Field(
        "files",
        description="'nccl': vLLM's NCCL weight transfer (CUDA); 'files': a safetensors file in "
        "sync_dir that the server reloads (any platform)",
    )
    sync_dir: str | None = Field(
        None,
        description="with weight_transfer 'files': a folder the trainer and the "
        "server both see; null: a temporary folder on this machine",
    )
    server_args: list[str] = Field(
        default_factory=list,
        description="more arguments for a server started here (e.g. [--gpu-memory-utilization, '0.9'])",
    )

    @model_validator(mode="after")
    def _vllm_installed(self):
        if (self.url is None or self.weight_transfer == "nccl") and importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "a vLLM server started here, or NCCL weight transfer, needs vLLM, which is not "
                f"installed here: {INSTALL}"
            )
        return self


class VLLMServerEngine(Engine):
    Options: ClassVar[type[EngineOptions]] = VLLMServerOptions
    options: VLLMServerOptions

    def __init__(self, options: VLLMServerOptions, setup: EngineSetup):
        super().__init__(options, setup)
        self.server: subprocess.Popen | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="rlkit-vllm-server-"))
        self.nccl: VLLMClient | None = None
        self.pushes = dist.get_rank() == 0 if dist.is_initialized() else True
        try:
            self.url = options.url or self._start_server()
            self.model = self._call("GET", "/v1/models")["data"][0]["id"]
            if options.weight_transfer == "nccl" and self.pushes:
                from trl.generation.vllm_client import VLLMClient

                self.nccl = VLLMClient(base_url=self.url, connection_timeout=options.timeout_s)
                self._within(partial(self.nccl.init_communicator, setup.device), "init_weight_transfer_engine")
        except BaseException:
            self.close()  # no server or scratch folder left behind
            raise

    # ------------------------------------------------------------ the protocol
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> Completions:
        greedy = sampling.greedy
        payload = {
            "model": self.model,
            "prompt": prompt_ids,
            "n": sampling.n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if greedy else sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "stop_token_ids": self.setup.eos_token_ids,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }
        if not greedy:
            payload["logprobs"] = 0
        if sampling.seed is not None:
            # one seed per request: the server seeds every prompt's generator with it (the i-th sample with
            # seed + i), so a prompt's completions depend only on the seed and its tokens
            payload["seed"] = sampling.seed
        choices = self._call("POST", "/v1/completions", payload)["choices"]  # prompt-major, n per prompt
        ids = [c["token_ids"] for c in choices]
        logp = None if greedy else [c["logprobs"]["token_logprobs"] for c in choices]
        return Completions.from_lists(
            ids, logp, self.setup.eos_token_ids, self.setup.tokenizer.pad_token_id, self.version or 0, self.setup.device
        )

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        if self.pushes:
            state = checkpoint_state(model)
            if self.nccl is not None:
                self._within(partial(_push_nccl, self.nccl, state), "update_weights")
            else:
                self._push_file(state, version)
            self._call("POST", "/reset_prefix_cache")
        if dist.is_initialized():
            dist.barrier()  # no rank samples from the server before the push is in
        self.version = version

    def probe_logp(self, ids: list[int]) -> torch.Tensor:
        payload = {"model": self.model, "prompt": [ids], "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0}
        [choice] = self._call("POST", "/v1/completions", payload)["choices"]
        steps = choice["prompt_logprobs"][1:]  # position 0 has no log-prob
        return torch.tensor([step[str(t)]["logprob"] for t, step in zip(ids[1:], steps)])

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)  # the server and its engine process
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------ weights
    def _push_file(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Write the weights for the server to reload (then remove them: the server has read them)."""
        from safetensors.torch import save_file

        folder = Path(self.options.sync_dir or self.scratch) / f"rlkit-weights-v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        dtype, seen, tensors = getattr(torch, self.setup.dtype), set(), {}
        for name, t in state.items():  # a tied tensor once, under its first name (as save_pretrained does)
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                tensors[name] = t.detach().to("cpu", dtype).contiguous()
        save_file(tensors, str(folder / "model.safetensors"))
        try:
            self._call("POST", "/collective_rpc", {"method": "rlkit_reload_weights", "args": [str(folder)]})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------ the wire
    def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One HTTP call with the deadline ``timeout_s``; the JSON answer ({} for an empty one)."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.options.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            raise EngineUnavailable(
                f"the vLLM server at {self.url} refused {method} {path}: HTTP {e.code} "
                f"{e.read().decode(errors='replace')[:500]}"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise EngineUnavailable(
                f"the vLLM server at {self.url} did not answer {method} {path} within "
                f"rollout.engine.timeout_s={self.options.timeout_s:g} s: "
                f"{getattr(e, 'reason', e)}"
            ) from None
        return json.loads(body) if body.strip() else {}

    def _within(self, fn: Callable[[], Any], what: str) -> None:
        """Run ``fn`` (a call through TRL's client, which has no deadline of its own) within ``timeout_s``."""
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            pool.submit(fn).result(timeout=self.options.timeout_s)
        except FutureTimeout:
            raise EngineUnavailable(
                f"the vLLM server at {self.url} did not finish {what} within "
                f"rollout.engine.timeout_s={self.options.timeout_s:g} s"
            ) from None
        finally:
            pool.shutdown(wait=False)

    def _start_server(self) -> str:
        """A server for this run on a free local port, its output in a log file; the URL once it answers."""
        port = free_port()
        s, o = self.setup, self.options
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            s.model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            s.dtype,
            "--seed",
            str(s.seed),
            "--max-model-len",
            str(s.max_model_len),
            "--logprobs-mode",
            "processed_logprobs",
            "--max-logprobs",
            "-1",
            "--generation-config",
            "vllm",
            "--worker-extension-cls",
            f"{__name__}.WorkerExtension",
            *o.server_args,
        ]
        if s.device.type != "cuda":
            command.append("--enforce-eager")  # no CUDA graphs to capture
        if o.weight_transfer == "nccl":
            command += ["--weight-transfer-config", json.dumps({"backend": "nccl"})]
        launcher = {
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "GROUP_RANK",
            "ROLE_RANK",
            "TORCHELASTIC_RUN_ID",
        }  # the server is not one of the trainer's ranks
        env = {k: v for k, v in os.environ.items() if k not in launcher}
        env["VLLM_SERVER_DEV_MODE"] = "1"  # /collective_rpc and /reset_prefix_cache
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB on a CPU (vLLM's default is 4)
        log = self.scratch / "server.log"
        with open(log, "wb") as out:
            self.server = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + o.startup_timeout_s
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise EngineUnavailable(
                    f"the vLLM server exited with code {self.server.returncode} while starting; "
                    f"its last output:\n{log.read_text(errors='replace')[-3000:]}"
                )
            try:
                urllib.request.urlopen(url + "/health", timeout=5).close()
                return url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        self.close()
        raise EngineUnavailable(
            f"the vLLM server started on port {port} did not answer within "
            f"rollout.engine.startup_timeout_s={o.startup_timeout_s:g} s; its log: {log}"
        )


def _push_nccl(client: VLLMClient, state: dict[str, torch.Tensor]) -> None:
    """Send ``state`` through vLLM's NCCL weight-transfer engine: (name, dtype, shape) of each, then the tensors."""
    metadata = [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()]
    client.update_named_params(metadata, iter(state.items()))


class WorkerExtension:
    """Methods vLLM mixes into each of the server's workers (``--worker-extension-cls``), called through
    ``/collective_rpc``."""

    # the vLLM worker's own, which this class is mixed into
    model_runner: Any
    reload_weights: Callable[..., None]

    def rlkit_reload_weights(self, folder: str) -> None:
        """Reload every weight from the safetensors files in ``folder`` and refresh the tied output layer on
        a CPU (:func:`rlkit.rollout.vllm.repack_cpu_output_layer`)."""
        from vllm.platforms import current_platform

        self.reload_weights(weights_path=folder, is_checkpoint_format=True)
        config = self.model_runner.model_config.hf_config
        if getattr(config, "tie_word_embeddings", False) and current_platform.is_cpu():
            repack_cpu_output_layer(self)
