"""Multi-turn episodes, token in and token out: rows laid out exactly as sampled, masks and behaviour
log-probs aligned with them, limits, the one-turn case equal to a single-turn rollout, equal generate
calls on every rank."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlkit.distributed import all_max
from rlkit.environments import Environment, Reply, ToolEnvironment, calculator
from rlkit.environments.spec import EnvironmentSpec
from rlkit.models import (
    build_bpe_tokenizer,
    build_char_tokenizer,
    build_tiny_bpe_model,
    build_tiny_model,
    eos_token_ids,
)
from rlkit.rollout import Completions, Engine, EngineOptions, EngineSetup, HFEngine, Sampling, reply_ids, run_episodes
from rlkit.rollout import sample as single_turn
from rlkit.trainer.logprobs import completion_scores
from tests.ports import free_port
from tests.process_groups import leave


class Echo(Environment):
    """Replies to every turn with a tool message 'ok', for ``options['turns']`` turns, then ends."""

    def step(self, turn):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen >= self.options.get("turns", 2):
            return Reply(done=True, reward=0.5)
        return Reply(messages=[{"role": "tool", "content": "ok"}], reward=0.25)


def spec(cls=Echo, tools=(), max_turns=4, max_tokens=200, **options) -> EnvironmentSpec:
    return EnvironmentSpec(cls, list(tools), options, max_turns, max_tokens)


class Scripted(Engine):
    """Returns scripted turns: call k gives row r the token ids ``script[k][r]`` (EOS where the script has
    it) with log-prob -(100 k + position) for each, so every value says where it came from."""

    def __init__(self, setup, script):
        super().__init__(EngineOptions(), setup)
        self.script, self.calls = script, 0

    def generate(self, prompt_ids, sampling):
        rows = [list(r)[: sampling.max_new_tokens] for r in self.script[self.calls]][: len(prompt_ids) * sampling.n]
        logp = [[-(100.0 * self.calls + t) for t in range(len(r))] for r in rows]
        self.calls += 1
        tok = self.setup.tokenizer
        return Completions.from_lists(rows, logp, [tok.eos_token_id], tok.pad_token_id, 7, torch.device("cpu"))


def setup_for(tok, model=None) -> EngineSetup:
    eos = [tok.eos_token_id] if model is None else eos_token_ids(tok, model)
    return EngineSetup("", tok, eos, "float32", torch.device("cpu"), 0, 256)


def chars(tok, text, eos=True):
    return tok(text, add_special_tokens=False).input_ids + ([tok.eos_token_id] if eos else [])


def ending_early(model, tok, prompts, logit: float) -> None:
    """Turn ``model``'s (tied) EOS embedding along its mean final hidden state on ``prompts``, scaled so the
    EOS logit is about ``logit`` there: an untrained model then ends its turns after a few tokens, as an
    episode needs, on any engine (a logits hook would reach the trainer's forward only)."""
    enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**enc).last_hidden_state[enc.attention_mask.bool()]  # after the final norm
        direction = hidden.mean(0)
        model.get_output_embeddings().weight[tok.eos_token_id] = logit * direction / direction.dot(direction)


def test_an_episode_row_is_the_sampled_turns_and_the_encoded_replies():
    tok = build_char_tokenizer()
    turn1, turn2 = chars(tok, "ab"), chars(tok, "c")
    engine = Scripted(setup_for(tok), [[turn1], [turn2]])
    out = run_episodes(engine, spec(), [[{"role": "user", "content": "q"}]], {"answer": ["c"]}, Sampling(1, 8))
    reply = reply_ids(tok, [{"role": "tool", "content": "ok"}], None)
    assert tok.decode(reply) == "<|tool|>ok\n<|assistant|>"
    assert out.completion_ids[0].tolist() == turn1 + reply + turn2
    assert out.loss_mask[0].tolist() == [1.0] * 3 + [0.0] * len(reply) + [1.0] * 2
    assert out.completion_mask[0].tolist() == [1.0] * (5 + len(reply))
    expected_logp = [0.0, -1.0, -2.0] + [0.0] * len(reply) + [-100.0, -101.0]
    assert out.logp is not None and out.logp[0].tolist() == expected_logp
    assert out.completions == ["c"] and not out.truncated[0] and out.policy_version.tolist() == [7]
    record = out.episodes[0]
    assert [m["role"] for m in record.transcript] == ["assistant", "tool", "assistant"]
    assert (record.turns, record.env_reward) == (2, 0.75)


def test_limits_truncate_episodes():
    tok = build_char_tokenizer()
    prompt, columns = [[{"role": "user", "content": "q"}]], {"answer": ["c"]}
    long_turn = chars(tok, "abcdef")
    # max_turns: still running after its one turn
    out = run_episodes(Scripted(setup_for(tok), [[long_turn]]), spec(max_turns=1), prompt, columns, Sampling(1, 8))
    assert out.truncated.tolist() == [True] and out.completion_ids.shape[1] == 7
    # max_tokens: the turn is cut to the budget, and the episode ends there
    out = run_episodes(Scripted(setup_for(tok), [[long_turn]]), spec(max_tokens=4), prompt, columns, Sampling(1, 8))
    assert out.truncated.tolist() == [True] and out.completion_ids[0].tolist() == long_turn[:4]
    # no room for a reply and a next turn
    out = run_episodes(Scripted(setup_for(tok), [[long_turn]]), spec(max_tokens=9), prompt, columns, Sampling(1, 8))
    assert out.truncated.tolist() == [True] and out.completion_ids[0].tolist() == long_turn
    # a turn that never ended (no EOS within max_new_tokens) gets no reply
    no_eos = chars(tok, "abcdef", eos=False)
    out = run_episodes(Scripted(setup_for(tok), [[no_eos]]), spec(), prompt, columns, Sampling(1, 6))
    assert out.truncated.tolist() == [True] and out.episodes[0].turns == 1


def test_sampled_tokens_are_trained_as_sampled_where_decode_encode_differs():
    """A BPE model sampling at random writes token sequences that do not re-encode to themselves; every one
    must reach the training row unchanged, with its behaviour log-prob beside it."""
    tok = build_bpe_tokenizer()
    tok.pad_token = tok.eos_token  # as rlkit.models.load_tokenizer sets it
    model = build_tiny_bpe_model(tok).float().eval()
    eos = eos_token_ids(tok, model)
    bias = torch.zeros(model.config.vocab_size)
    bias[eos] = 5.0  # turns end after a few tokens (an untrained model rarely writes an EOS)
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    torch.manual_seed(0)
    recorded = []

    class Recording(HFEngine):
        def generate(self, prompt_ids, sampling):
            out = super().generate(prompt_ids, sampling)
            recorded.append([row[m > 0].tolist() for row, m in zip(out.ids, out.mask)])
            return out

    engine = Recording.on(model, tok, eos)
    prompts = [[{"role": "user", "content": f"{i}+{i}="}] for i in range(4)]
    out = run_episodes(engine, spec(turns=3, max_tokens=150), prompts, {}, Sampling(2, 12))
    rows = len(out)
    sampled = [[] for _ in range(rows)]  # each episode's sampled tokens, turn after turn
    for k, call in enumerate(recorded):  # call k samples turn k + 1 of the episodes that reached it, in order
        for r, ids in zip([r for r in range(rows) if out.episodes[r].turns > k], call, strict=True):
            sampled[r] += ids
    differs = 0
    for r in range(rows):
        model_tokens = out.completion_ids[r][out.loss_mask[r] > 0].tolist()
        assert model_tokens == sampled[r][: len(model_tokens)] and len(model_tokens) == len(sampled[r])
        text = tok.decode(model_tokens, skip_special_tokens=False)
        differs += tok(text, add_special_tokens=False).input_ids != model_tokens
    assert differs > 0, "no episode re-encodes differently: the check above proved nothing"
    assert (out.loss_mask == 0).logical_and(out.completion_mask > 0).any()  # replies are in the rows
    scores = completion_scores(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask, 1.0)
    model_positions = out.loss_mask > 0
    torch.testing.assert_close(out.logp[model_positions], scores.logp[model_positions], atol=1e-4, rtol=0)
    assert torch.all(out.logp[~model_positions] == 0)


def test_an_episode_of_one_turn_is_the_single_turn_rollout():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok).eval()
    engine = HFEngine.on(model, tok, eos_token_ids(tok, model))
    prompts, columns, sampling = ["1+2=", "30+4="], {"answer": ["3", "34"]}, Sampling(4, 6)
    torch.manual_seed(3)
    expected = single_turn(engine, prompts, columns, sampling)
    torch.manual_seed(3)
    out = run_episodes(engine, spec(ToolEnvironment), prompts, columns, sampling)  # no tool call: done
    for name in (
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "loss_mask",
        "group_ids",
        "truncated",
        "logp",
        "policy_version",
    ):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=0, atol=0, msg=name)
    assert out.completions == expected.completions and out.prompts == expected.prompts
    assert all(e.turns == 1 and e.tool_calls == 0 for e in out.episodes)


def test_tools_are_offered_through_the_chat_template():
    tok = build_char_tokenizer()
    turn = chars(tok, "9")
    engine = Scripted(setup_for(tok), [[turn]])
    out = run_episodes(
        engine, spec(ToolEnvironment, [calculator]), [[{"role": "user", "content": "3*3="}]], {}, Sampling(1, 4)
    )
    assert out.prompts[0].startswith("<|system|>tools: calculator\n")
    with pytest.raises(ValueError, match="chat messages"):
        run_episodes(
            Scripted(setup_for(tok), [[turn]]), spec(ToolEnvironment, [calculator]), ["3*3="], {}, Sampling(1, 4)
        )


def _rank(rank: int, world: int, port: int, counts) -> None:
    """Rank 0's episodes end after one turn, rank 1's run three: both must call generate three times."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tok = build_char_tokenizer()
    turns = 1 if rank == 0 else 3
    engine = Scripted(setup_for(tok), [[chars(tok, "a")] * 2] * 3)
    any_rank = lambda running: bool(all_max(torch.tensor(float(running))) > 0)  # noqa: E731
    out = run_episodes(engine, spec(turns=turns), ["q", "r"], {}, Sampling(1, 4), any_rank=any_rank)
    counts[rank] = (engine.calls, out.episodes[0].turns)
    leave()


def test_every_rank_makes_the_same_number_of_generate_calls():
    counts = mp.Manager().dict()
    mp.spawn(_rank, args=(2, free_port(), counts), nprocs=2, join=True)
    assert dict(counts) == {0: (3, 1), 1: (3, 3)}
