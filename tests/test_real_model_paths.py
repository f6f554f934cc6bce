"""What real Hugging Face checkpoints bring, exercised with ``builtin:tiny-bpe``: a BPE tokenizer that adds a
BOS, a chat template that writes its own, two EOS ids, no pad token, bf16 weights, a generation_config.json
with sampling settings of its own, and prompts longer than the limit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rlkit.data import (
    PromptTooLong,
    TaskData,
    check_prompt_lengths,
    check_room,
    load_task,
    prompt_lengths,
    render_prompt,
    tokenize_prompts,
)
from rlkit.models import (
    build_char_tokenizer,
    build_tiny_model,
    builtin_tiny_bpe_path,
    eos_token_ids,
    load_model,
    load_tokenizer,
)
from rlkit.recipe import load_recipe
from rlkit.recipe.schema import DataConfig
from rlkit.rollout import HFEngine, Sampling, sample
from rlkit.rollout.hf import mask_after_eos
from rlkit.trainer import Trainer
from rlkit.trainer.logprobs import completion_scores

ROOT = Path(__file__).parents[1]
CHAT = [{"role": "user", "content": "37+45="}]
CHAT_TEXT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n37+45=<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bpe_path(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLKIT_CACHE", str(cache))
        return builtin_tiny_bpe_path()


@pytest.fixture(scope="module")
def tok(bpe_path):
    return load_tokenizer(bpe_path)


@pytest.fixture
def model(bpe_path):
    return load_model(bpe_path, "bfloat16").eval()


def ids_of(tok, *tokens):
    return tok.convert_tokens_to_ids(list(tokens))


# ---------------------------------------------------------------- the checkpoint


def test_tiny_bpe_is_a_llama3_shaped_bf16_checkpoint(bpe_path):
    tok = AutoTokenizer.from_pretrained(bpe_path)
    model = AutoModelForCausalLM.from_pretrained(bpe_path)
    assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size == 512
    assert model.config.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    with safe_open(bpe_path / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (safe_open is not iterable)
    assert tok.pad_token is None and tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"
    assert model.generation_config.eos_token_id == ids_of(tok, "<|end_of_text|>", "<|eot_id|>")


def test_bpe_tokenizer_adds_one_bos_and_round_trips_text(bpe_path):
    tok = AutoTokenizer.from_pretrained(bpe_path)
    text = "Two  spaces,\ta tab\nnew lines\n\n 37+45=82 é\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[1:]) == text
    assert len(ids) - 1 < len(text.encode())  # merges: fewer tokens than bytes


def test_pad_falls_back_to_eos(bpe_path, tok):
    assert AutoTokenizer.from_pretrained(bpe_path).pad_token is None
    assert tok.pad_token == tok.eos_token == "<|eot_id|>" and tok.padding_side == "left"
    assert build_char_tokenizer().pad_token == "<pad>"  # a tokenizer with a pad token keeps it


# ---------------------------------------------------------------- prompts


def test_plain_prompt_gets_one_bos_chat_prompt_one_from_its_template(tok):
    [plain] = tokenize_prompts(["37+45="], tok)
    assert tok.convert_ids_to_tokens(plain) == ["<|begin_of_text|>", "37", "+", "45", "="]
    [chat] = tokenize_prompts([CHAT], tok)
    assert chat[0] == tok.bos_token_id and chat.count(tok.bos_token_id) == 1
    assert tok.decode(chat) == CHAT_TEXT == render_prompt(CHAT, tok)


def test_tiny_char_tokenizer_still_adds_no_bos():
    char = build_char_tokenizer()
    [ids] = tokenize_prompts(["1+1="], char)
    assert char.convert_ids_to_tokens(ids) == ["1", "+", "1", "="]


def test_engine_gets_the_tokenized_prompts_left_padded_and_shows_the_rendered_text(tok, model):
    prompts = [[{"role": "user", "content": "7+5="}], [{"role": "user", "content": "37+45=, and more words"}]]
    engine = HFEngine.on(model, tok, eos_token_ids(tok, model))
    batch = sample(engine, prompts, {"answer": ["12", "82"]}, Sampling(n=2, max_new_tokens=3))
    expected = tokenize_prompts(prompts, tok)
    n_pad = len(expected[1]) - len(expected[0])
    assert n_pad > 0 and batch.prompt_mask.sum(-1).tolist() == [len(expected[0])] * 2 + [len(expected[1])] * 2
    for row, mask, ids in zip(batch.prompt_ids, batch.prompt_mask, [expected[0]] * 2 + [expected[1]] * 2):
        assert row[mask.bool()].tolist() == ids
        assert (row[~mask.bool()] == tok.eos_token_id).all()  # pad fallback: EOS, masked
    assert batch.prompts == [render_prompt(p, tok) for p in prompts for _ in range(2)]
    assert batch.group_ids.tolist() == [0, 0, 1, 1] and batch.group_ids.device == model.device


def test_addition_chat_task_is_the_addition_task_as_user_messages():
    plain = load_task(DataConfig(task="builtin:addition", eval_size=50), seed=3)
    chat = load_task(DataConfig(task="builtin:addition_chat", eval_size=50), seed=3)
    for split in ("train", "eval"):
        a, b = getattr(plain, split), getattr(chat, split)
        assert b["prompt"][:] == [[{"role": "user", "content": p}] for p in a["prompt"]]
        assert b["answer"][:] == a["answer"][:]


# ---------------------------------------------------------------- EOS


def test_eos_ids_are_the_tokenizers_then_the_generation_configs(tok, model):
    assert eos_token_ids(tok, model) == ids_of(tok, "<|eot_id|>", "<|end_of_text|>")
    char = build_char_tokenizer()
    tiny = build_tiny_model(char)
    assert tiny.generation_config.eos_token_id == char.eos_token_id  # an int, the tokenizer's own
    assert eos_token_ids(char, tiny) == [char.eos_token_id]
    tiny.generation_config.eos_token_id = [7, char.eos_token_id, 7]
    assert eos_token_ids(char, tiny) == [char.eos_token_id, 7]


def test_mask_stops_at_the_first_token_of_any_eos_id():
    ids = torch.tensor([[7, 1, 9, 4], [4, 8, 8, 8], [7, 8, 9, 6], [7, 8, 1, 1]])
    mask, truncated = mask_after_eos(ids, [4, 1])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert truncated.tolist() == [False, False, True, False]


def scripted(model, first: int, then: int):
    """``model`` now puts all its mass on ``then`` after the token ``first``, and on ``first`` after any other."""

    def hook(module, args, kwargs, output):
        nxt = torch.where(kwargs["input_ids"][:, -1] == first, then, first)
        last = torch.full_like(output.logits[:, -1], -1e4)
        output.logits[:, -1] = last.scatter(-1, nxt[:, None], 0.0)
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    return model


@pytest.mark.parametrize("greedy", [False, True])
def test_generation_stops_and_masks_at_the_second_eos_id(tok, model, greedy):
    first, end_of_text = ids_of(tok, "82", "<|end_of_text|>")
    model = scripted(model, first, then=end_of_text)
    engine = HFEngine.on(model, tok, eos_token_ids(tok, model))
    batch = sample(engine, ["37+45=", "7+5="], {}, Sampling(n=2, max_new_tokens=6, greedy=greedy))
    assert batch.completion_ids.tolist() == [[first, end_of_text]] * 4  # every row stopped after 2 tokens
    assert batch.completion_mask.tolist() == [[1, 1]] * 4 and not batch.truncated.any()
    assert batch.completions == ["82"] * 4
    only_eot = sample(HFEngine.on(model, tok, [tok.eos_token_id]), ["7+5="], {}, Sampling(n=1, max_new_tokens=6))
    assert only_eot.completion_ids.shape[1] == 6 and only_eot.truncated.all()  # what a missed EOS id does


# ---------------------------------------------------------------- generation settings


def test_generation_config_holds_rlkits_settings_only(tok, model):
    eos = ids_of(tok, "<|eot_id|>", "<|end_of_text|>")
    engine = HFEngine.on(model, tok, eos)
    common = dict(
        max_new_tokens=7,
        min_new_tokens=0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=eos[0],
    )
    unset = (
        "min_p",
        "top_h",
        "epsilon_cutoff",
        "eta_cutoff",
        "suppress_tokens",
        "begin_suppress_tokens",
        "bad_words_ids",
        "sequence_bias",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "max_length",
        "exponential_decay_length_penalty",
        "guidance_scale",
        "watermarking_config",
        "stop_strings",
    )
    for greedy, expected in (
        (False, dict(do_sample=True, temperature=0.7, top_p=0.95, top_k=0)),
        (True, dict(do_sample=False, temperature=None, top_p=None, top_k=None)),
    ):
        config = engine.generation_config(Sampling(n=1, max_new_tokens=7, temperature=0.7, top_p=0.95, greedy=greedy))
        assert {k: getattr(config, k) for k in {**common, **expected}} == {**common, **expected}
        assert all(getattr(config, k) in (None, 0.0) for k in unset), {k: getattr(config, k) for k in unset}


LEAKS = {  # what a checkpoint's generation_config.json may hold
    "repetition_penalty": {"repetition_penalty": 1.5},
    "top_k": {"top_k": 5},
    "suppress_tokens": {"suppress_tokens": list(range(5, 400))},
    "llama3_sampling": {"do_sample": True, "temperature": 0.6, "top_p": 0.9},
    "eos": {},  # + the first token rlkit samples, as an EOS id
}


def peaked(model):
    """Logits x5: a freshly initialised model is nearly uniform, where a penalty would change little."""
    model.model.norm.weight.data *= 5
    return model


@pytest.mark.parametrize(
    "leak,greedy", [(leak, greedy) for leak in LEAKS for greedy in (False, True) if not (greedy and leak == "top_k")]
)  # no top-k in greedy decoding
def test_checkpoint_generation_config_does_not_reach_sampling(bpe_path, tok, leak, greedy):
    plain, polluted = peaked(load_model(bpe_path, "bfloat16")), peaked(load_model(bpe_path, "bfloat16"))
    plain.generation_config = GenerationConfig()
    eos = eos_token_ids(tok, plain)
    sampling = Sampling(n=4, max_new_tokens=8, greedy=greedy)

    def rollout(model):
        torch.manual_seed(0)
        return sample(HFEngine.on(model, tok, eos), ["37+45=", "the quick brown fox"], {}, sampling)

    clean = rollout(plain)
    leak_settings = LEAKS[leak] or {"eos_token_id": [*eos, int(clean.completion_ids[0, 0])]}
    polluted.generation_config = GenerationConfig(**leak_settings)
    assert torch.equal(rollout(polluted).completion_ids, clean.completion_ids)

    def generate(config):  # the same sampling, given its settings outright
        torch.manual_seed(0)
        return plain.generate(input_ids=clean.prompt_ids, attention_mask=clean.prompt_mask, generation_config=config)

    config = HFEngine.on(plain, tok, eos).generation_config(sampling)
    leaked = GenerationConfig(**{**config.to_diff_dict(), **leak_settings})
    assert not torch.equal(generate(config), generate(leaked))  # the test can fail: the setting shows


# ---------------------------------------------------------------- prompt length


def test_prompt_over_the_limit_fails_naming_split_row_length_and_limit():
    char = build_char_tokenizer()
    data = TaskData(
        train=Dataset.from_dict({"prompt": ["1+1=", "12+34="]}),
        eval=Dataset.from_dict({"prompt": ["1+1=", "2+2=", "3+3=", "123+456=", "1234+5678="]}),
    )
    check_prompt_lengths(prompt_lengths(data, char), limit=10)
    with pytest.raises(
        PromptTooLong,
        match=r"^eval data, row 3: the prompt is 8 tokens, over "
        r"rollout.max_prompt_tokens=6 \(2 of 5 eval prompts are over\)",
    ):
        check_prompt_lengths(prompt_lengths(data, char), limit=6)


def test_chat_prompt_length_counts_bos_and_template(tok):
    n = len(tok(CHAT_TEXT, add_special_tokens=False).input_ids)
    data = TaskData(train=Dataset.from_dict({"prompt": [CHAT]}), eval=Dataset.from_dict({"prompt": [CHAT]}))
    check_prompt_lengths(prompt_lengths(data, tok), limit=n)
    with pytest.raises(PromptTooLong, match=f"^train data, row 0: the prompt is {n} tokens"):
        check_prompt_lengths(prompt_lengths(data, tok), limit=n - 1)


def test_truncate_left_keeps_the_last_tokens(tok, model):
    char = build_char_tokenizer()
    two = Sampling(n=1, max_new_tokens=2)
    batch = sample(
        HFEngine.on(build_tiny_model(char), char, [char.eos_token_id]),
        ["123+456=", "1+1="],
        {},
        two,
        max_prompt_tokens=4,
    )
    assert [char.decode(r[m.bool()]) for r, m in zip(batch.prompt_ids, batch.prompt_mask)] == ["456=", "1+1="]
    assert batch.prompts == ["123+456=", "1+1="]  # verifiers see the whole prompt
    batch = sample(HFEngine.on(model, tok, eos_token_ids(tok, model)), [CHAT], {}, two, max_prompt_tokens=5)
    assert batch.prompt_ids[0].tolist() == tokenize_prompts([CHAT], tok)[0][-5:]


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["rollout.max_prompt_tokens=15"],
            PromptTooLong,
            r"^train data, row 7: the prompt is 16 tokens, over rollout.max_prompt_tokens=15 \(1 of 10",
        ),
        # builtin:tiny has 256 positions: 16 + 245 = 261 are too many, 4 + 245 = 249 fit
        (
            ["rollout.max_new_tokens=245"],
            PromptTooLong,
            r"^train data, row 7: the prompt's 16 tokens and rollout.max_new_tokens=245 are 261 positions, over the 256 "
            r"of model.path \(max_position_embeddings; 1 of 10 train prompts are over\)",
        ),
        # cut to its last 8 tokens, the long prompt fits too (8 + 245 = 253): the trainer goes on to the warm start
        (
            ["rollout.max_new_tokens=245", "rollout.max_prompt_tokens=8", "rollout.prompt_overflow=truncate_left"],
            AssertionError,
            "the warm start ran",
        ),
    ],
    ids=["over max_prompt_tokens", "over the model's positions", "cut to fit"],
)
def test_trainer_stops_on_a_long_prompt_before_any_training(overrides, error, message, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("RLKIT_CACHE", str(cache))
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"prompt": "1+1=" * (1 + 3 * (i == 7)), "answer": "2"}) + "\n" for i in range(10))
    )

    def no_training(*args, **kwargs):
        raise AssertionError("the warm start ran")

    monkeypatch.setattr("rlkit.trainer.loop.warm_start", no_training)
    recipe = load_recipe(
        ROOT / "recipes/quickstart.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "data.task=null",
            f"data.train={train}",
            f"data.eval={train}",
            "model.warm_start.val_size=5",
            "log.trackers=[]",
            *overrides,
        ],
    )
    with pytest.raises(error, match=message):
        Trainer(recipe)


def test_room_to_generate_counts_the_prompt_as_it_is_cut():
    lengths = {"train": [4, 16], "eval": [4, 10]}
    check_room(lengths, max_prompt_tokens=16, max_new_tokens=240, positions=256, model="model.path")  # 16 + 240
    check_room(lengths, max_prompt_tokens=16, max_new_tokens=10**6, positions=None, model="model.path")
    # the 16-token prompt cut to 10: 10 + 5 = 15 positions, one over
    with pytest.raises(
        PromptTooLong,
        match=r"^train data, row 1: the prompt's 10 tokens and rollout.max_new_tokens=5 "
        r"are 15 positions, over the 14 of teacher.path \(max_position_embeddings; "
        r"1 of 2 train prompts",
    ):
        check_room(lengths, max_prompt_tokens=10, max_new_tokens=5, positions=14, model="teacher.path")


# ---------------------------------------------------------------- bf16


def test_bf16_model_gives_fp32_logprobs_of_its_bf16_logits(tok, model):
    engine = HFEngine.on(model, tok, eos_token_ids(tok, model))
    torch.manual_seed(0)
    b = sample(engine, ["37+45=", "the quick brown fox"], {}, Sampling(n=2, max_new_tokens=6))
    s = completion_scores(
        model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, 1.0, with_logits=True
    )
    assert s.logits.dtype == torch.bfloat16 and s.logp.dtype == torch.float32 and torch.isfinite(s.logp).all()
    reference = torch.log_softmax(s.logits.float(), -1).gather(-1, b.completion_ids[..., None]).squeeze(-1)
    # the same logits, log-softmax in fp32: equal up to rounding the result to bf16 (relative 2^-9)
    torch.testing.assert_close(s.logp, reference, rtol=2**-7, atol=0)


def test_packed_positions_give_the_logits_and_logprobs_of_those_positions(tok, model):
    """positions: only the chosen tokens are projected to the vocabulary ([n,V]); the values are those of
    the full forward at the same positions, and the gradient reaches the model through them."""
    engine = HFEngine.on(model, tok, eos_token_ids(tok, model))
    torch.manual_seed(0)
    b = sample(engine, ["37+45=", "the quick brown fox"], {}, Sampling(n=2, max_new_tokens=6))
    positions = (b.completion_mask > 0) & (torch.rand(b.completion_mask.shape) < 0.5)
    positions[0, 0] = True
    full = completion_scores(
        model,
        b.prompt_ids,
        b.prompt_mask,
        b.completion_ids,
        b.completion_mask,
        0.7,
        with_entropy=True,
        with_logits=True,
    )
    packed = completion_scores(
        model,
        b.prompt_ids,
        b.prompt_mask,
        b.completion_ids,
        b.completion_mask,
        0.7,
        with_entropy=True,
        with_logits=True,
        positions=positions,
    )
    assert packed.logits.shape == (int(positions.sum()), full.logits.shape[-1])
    # the two forwards pack their rows differently (only the chosen positions are read), so bf16 sums run
    # in another order: logits below 4 in magnitude differ by at most one bf16 step there (2^-6), and
    # log-probs and entropies (a logit minus a log-sum-exp of logits) by at most twice that
    assert full.logits.abs().max() < 4
    torch.testing.assert_close(packed.logits, full.logits[positions], rtol=0, atol=2**-6)
    torch.testing.assert_close(packed.logp, torch.where(positions, full.logp, 0.0), rtol=0, atol=2**-5)
    torch.testing.assert_close(packed.entropy, torch.where(positions, full.entropy, 0.0), rtol=0, atol=2**-5)
    packed.logits.float().sum().backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- the recipe, end to end


@pytest.mark.slow
def test_tiny_bpe_recipe_runs_end_to_end_and_saves_a_loadable_checkpoint(tmp_path, cache):
    # a short warm start: TRL's SFT on chat prompts with assistant-turn completions, then RL
    command = [
        sys.executable,
        "-m",
        "rlkit.cli",
        "train",
        "recipes/tiny_bpe.yaml",
        f"output_dir={tmp_path}",
        "model.warm_start={max_steps: 10, eval_every: 5, batch_size: 16, val_size: 16}",
        "trainer.steps=2",
        "trainer.prompts_per_step=4",
        "rollout.samples_per_prompt=2",
        "data.eval_size=8",
        "log.trackers=[]",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "RLKIT_CACHE": str(cache)}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    saved = tmp_path / "checkpoints" / "step-000002" / "model"
    model, tok = AutoModelForCausalLM.from_pretrained(saved), AutoTokenizer.from_pretrained(saved)
    assert model.dtype == torch.bfloat16
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True).input_ids
    assert ids[0].tolist().count(tok.bos_token_id) == 1
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
