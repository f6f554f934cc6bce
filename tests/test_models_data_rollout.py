"""The embedded tiny model and tokenizer, the built-in task, and the hf rollout engine."""

import torch

from rlkit.data import addition_task, load_task, render_prompt
from rlkit.models import build_char_tokenizer, build_tiny_model
from rlkit.rollout import HFEngine, Sampling, sample


def test_char_tokenizer_round_trips_text_with_spaces_and_newlines():
    tok = build_char_tokenizer()
    text = "12 + 34 =\n<answer>46</answer>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_chat_prompts_go_through_the_template():
    tok = build_char_tokenizer()
    assert render_prompt([{"role": "user", "content": "1+1="}], tok) == "<|user|>1+1=\n<|assistant|>"
    assert render_prompt("1+1=", tok) == "1+1="


def test_addition_task_is_seeded_and_holds_out_unseen_problems():
    a, b = addition_task(seed=3, eval_size=50), addition_task(seed=3, eval_size=50)
    assert a.eval["prompt"][:] == b.eval["prompt"][:]
    assert len(a.train) == 10_000 - 50 and len(a.eval) == 50
    assert not set(a.eval["prompt"]) & set(a.train["prompt"])
    for prompt, answer in zip(a.eval["prompt"][:5], a.eval["answer"][:5]):
        x, y = prompt.rstrip("=").split("+")
        assert int(x) + int(y) == int(answer)
    assert addition_task(seed=4, eval_size=50).eval["prompt"][:] != a.eval["prompt"][:]


def test_local_jsonl_with_held_out_slice(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f'{{"prompt": "q{i}", "answer": "{i}"}}\n' for i in range(20)))
    data = load_task(None, str(path), None, seed=0, eval_size=4)
    assert len(data.train) == 16 and len(data.eval) == 4


def test_hf_engine_groups_masks_and_truncation():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0).eval()
    torch.manual_seed(0)
    engine = HFEngine.on(model, tok, [tok.eos_token_id])
    batch = sample(engine, ["12+34=", "7+5="], {"answer": ["46", "12"]}, Sampling(n=3, max_new_tokens=6))
    assert len(batch) == 6 and batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.columns == {"answer": ["46"] * 3 + ["12"] * 3}
    assert batch.prompt_mask[3:].sum(-1).tolist() == [4, 4, 4]  # "7+5=" left-padded to 6 tokens
    for ids, mask, truncated in zip(batch.completion_ids, batch.completion_mask, batch.truncated):
        eos = (ids == tok.eos_token_id).nonzero().flatten().tolist()
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # ones up to the end of the completion only
        if eos:
            assert n == eos[0] + 1 and not truncated
            assert (ids[n:] == tok.pad_token_id).all()
        else:
            assert n == ids.shape[0] and truncated
    assert batch.completions[0] == tok.decode(batch.completion_ids[0], skip_special_tokens=True)


def test_greedy_generation_is_deterministic():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=1).eval()
    engine, greedy = HFEngine.on(model, tok, [tok.eos_token_id]), Sampling(n=1, max_new_tokens=4, greedy=True)
    torch.manual_seed(0)
    a = sample(engine, ["1+1="], {}, greedy)
    torch.manual_seed(1)
    b = sample(engine, ["1+1="], {}, greedy)
    assert a.completions == b.completions and a.logp is None  # no behaviour log-probs for the argmax
