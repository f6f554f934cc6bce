"""The engine boundary: an engine chosen by import path, the probe check that catches a sync that did not
happen or left a weight behind, the recipe check of engine options, and the server engine's deadlines."""

import importlib.util
import json
import socket
import threading

import pytest
import torch

from rlkit.recipe import RecipeError, load_recipe
from rlkit.rollout import EngineOutOfSync
from rlkit.rollout.vllm_server import EngineUnavailable, VLLMServerEngine, VLLMServerOptions
from rlkit.trainer import Trainer
from tests.ports import free_port

ENGINE = "tests.rollout.copy_engine:CopyEngine"
SMALL = [
    "model.warm_start=null",
    "log.trackers=[]",
    "trainer.prompts_per_step=8",
    "rollout.samples_per_prompt=4",
    "trainer.steps=3",
    "trainer.save_every=0",
    "log.eval_every=0",
    "log.every=1",
    "data.eval_size=8",
    "trainer.lr=1e-2",
    "rewards=[{verifier: regex_format, kwargs: {pattern: '[0-9].*'}}]",
    "eval.metric=regex_format",
]  # varies on an untrained model


def run(tmp_path, engine: str):
    recipe = load_recipe("recipes/quickstart.yaml", [*SMALL, f"output_dir={tmp_path}", f"rollout.engine={engine}"])
    trainer = Trainer(recipe)
    return trainer, trainer.train


def test_an_engine_with_its_own_weights_stays_in_sync(tmp_path):
    trainer, train = run(tmp_path, f"{{type: '{ENGINE}'}}")
    summary = train()
    assert summary["steps"] == 3 and trainer.engine.version == trainer.version == 6  # 2 updates per step
    assert trainer.sync_probe_diff <= 1e-5  # fp32, the same module copied: only kernel sum order differs


@pytest.mark.parametrize("fault", ["skip_syncs: true", "drop: [model.embed_tokens.weight, lm_head.weight]"])
def test_a_sync_that_leaves_weights_behind_stops_the_run(tmp_path, fault):
    """Both faults pass the first sync (the copy starts equal) and must fail the second, after an update."""
    trainer, train = run(tmp_path, f"{{type: '{ENGINE}', {fault}}}")
    with pytest.raises(
        EngineOutOfSync,
        match=r"after syncing policy version 2 into the tests.rollout.copy_engine:"
        r"CopyEngine engine, its log-probs on the sync probe differ",
    ):
        train()
    assert trainer.engine.version == 2 and trainer.version == 2


def test_the_hf_engine_records_exactly_the_trainers_logprobs(tmp_path):
    """rlkit's on-policy claim, checked every step: behaviour log-probs equal the trainer's (fp32)."""
    trainer, train = run(tmp_path, "{type: hf}")
    train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [row["rollout/logp_diff_max"] for row in rows if "rollout/logp_diff_max" in row]
    assert len(values) == 3 and max(values) <= 1e-5 and min(values) > 0  # measured, not a constant


@pytest.mark.parametrize(
    "engine,message",
    [
        ("{type: hf, sync_toll: 1}", r"rollout.engine.sync_toll: unknown key; did you mean 'sync_tol'\?"),
        ("{type: hf, sync_tol: -1}", r"rollout.engine.sync_tol: Input should be greater than 0"),
        ("{type: nope}", r"rollout.engine.type: unknown engine 'nope'; registered: \['hf', 'vllm', 'vllm_server'\]"),
        ("{type: 'tests.rollout.copy_engine:Missing'}", r"rollout.engine.type: .*Missing"),
        pytest.param(
            "{type: vllm}",
            r"rollout.engine: .*the vllm engine needs vLLM, which is not installed here",
            marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed"),
        ),
    ],
)
def test_check_refuses_bad_engine_options(engine, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("recipes/quickstart.yaml", [f"rollout.engine={engine}"])


def silent_server() -> tuple[str, socket.socket]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


def test_a_server_that_does_not_answer_is_named_with_the_call(tmp_path):
    url, listener = silent_server()
    options = VLLMServerOptions(type="vllm_server", url=url, timeout_s=0.5)
    with pytest.raises(
        EngineUnavailable,
        match=rf"the vLLM server at {url} did not answer GET /v1/models within "
        r"rollout.engine.timeout_s=0.5 s",
    ):
        VLLMServerEngine(options, setup=None)
    listener.close()


def test_a_server_that_is_not_there_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineUnavailable, match=rf"the vLLM server at {url} did not answer GET /v1/models"):
        VLLMServerEngine(VLLMServerOptions(type="vllm_server", url=url, timeout_s=5), setup=None)


def test_completions_from_lists_stop_at_the_first_eos_and_pad():
    """What a server returns (token lists, log-prob lists) as padded tensors: the row ends at its first EOS
    (anything after is dropped), a row without one is truncated."""
    from rlkit.rollout import Completions

    out = Completions.from_lists(
        [[5, 2, 7, 2], [5, 6, 8], [3]],
        [[-0.5, -1.0, -2.0, -3.0], [-0.1, -0.2, -0.3], [-4.0]],
        eos_token_ids=[2, 9],
        pad_id=0,
        version=3,
        device=torch.device("cpu"),
    )
    assert out.ids.tolist() == [[5, 2, 0], [5, 6, 8], [3, 0, 0]]
    assert out.mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert out.truncated.tolist() == [False, True, True]
    assert torch.equal(out.logp, torch.tensor([[-0.5, -1.0, 0.0], [-0.1, -0.2, -0.3], [-4.0, 0.0, 0.0]]))
    assert out.version == 3
    greedy = Completions.from_lists([[9]], None, eos_token_ids=[2, 9], pad_id=0, version=0, device=torch.device("cpu"))
    assert greedy.ids.tolist() == [[9]] and greedy.logp is None and greedy.truncated.tolist() == [False]
