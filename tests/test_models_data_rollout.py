"""The embedded tiny model and tokenizer, the built-in task, and the hf rollout engine."""

import torch

from rlkit.builtins import BUILTIN_MULTIPLICATION, BUILTIN_TASK_ROWS
from rlkit.data import TOOL_SHARE, addition_task, load_task, multiplication_task, render_prompt
from rlkit.models import build_char_tokenizer, build_tiny_model
from rlkit.recipe.schema import DataConfig
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


def test_addition_task_holds_out_a_seeded_share_of_all_ten_thousand_problems():
    a, b = addition_task(seed=3, eval_size=50), addition_task(seed=3, eval_size=50)
    assert a.eval["prompt"][:] == b.eval["prompt"][:]
    assert len(a.train) == 10_000 - 50 and len(a.eval) == 50
    every_problem = {(f"{x}+{y}=", str(x + y)) for x in range(100) for y in range(100)}
    rows = [(p, ans) for split in (a.train, a.eval) for p, ans in zip(split["prompt"], split["answer"])]
    assert len(rows) == 10_000 and set(rows) == every_problem  # each problem once, with its sum as the answer
    assert not set(a.eval["prompt"]) & set(a.train["prompt"])
    assert addition_task(seed=4, eval_size=50).eval["prompt"][:] != a.eval["prompt"][:]


def test_multiplication_task_has_every_product_once_and_its_demonstrations_call_the_tool_on_hard_ones():
    task = multiplication_task(seed=3, eval_size=50)
    rows = [row for split in (task.train, task.eval) for row in split]
    hard = {(a, b) for a in range(11, 100) for b in range(11, 100)}  # 89 * 89 = 7921
    easy = {(a, m) for a in range(10, 100) for m in (1, 10, 100)} | {
        (m, a) for a in range(10, 100) for m in (1, 10, 100)
    }
    assert len(hard) + len(easy) == 7921 + 3 * 90 * 2 - 1 == len(rows) == BUILTIN_TASK_ROWS[BUILTIN_MULTIPLICATION]
    seen, calls = set(), 0
    for row in rows:
        a, b = map(int, row["prompt"][0]["content"].removesuffix("=").split("*"))
        seen.add((a, b))
        final = {"role": "assistant", "content": f"Answer: {a * b}"}
        assert row["answer"] == str(a * b) and row["demonstration"][-1] == final
        if len(row["demonstration"]) == 3:  # a call, its result, the answer
            call, result, _ = row["demonstration"]
            expected = '{"name":"calculator","arguments":{"expression":"' + f'{a}*{b}"' + "}}"
            assert call["content"] == f"<tool_call>{expected}</tool_call>" and result == {
                "role": "tool",
                "content": str(a * b),
            }
            assert (a, b) in hard
            calls += 1
        else:
            assert len(row["demonstration"]) == 1
    assert seen == hard | easy
    assert abs(calls / len(hard) - TOOL_SHARE) < 0.02  # 7921 coin flips: sd 0.0056
    assert not set(map(str, task.eval["prompt"])) & set(map(str, task.train["prompt"]))


def test_local_jsonl_holds_out_a_seeded_slice_of_at_most_a_fifth(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f'{{"prompt": "q{i}", "answer": "{i}"}}\n' for i in range(20)))
    data = load_task(DataConfig(task=None, train=str(path), eval_size=10), seed=0)
    assert len(data.train) == 16 and len(data.eval) == 4  # eval_size 10 capped at 20 // 5
    rows = [(p, ans) for split in (data.train, data.eval) for p, ans in zip(split["prompt"], split["answer"])]
    assert sorted(rows) == sorted((f"q{i}", str(i)) for i in range(20))  # every row once, answers with prompts
    again = load_task(DataConfig(task=None, train=str(path), eval_size=10), seed=0)
    assert again.eval["prompt"] == data.eval["prompt"]
    assert load_task(DataConfig(task=None, train=str(path), eval_size=10), seed=1).eval["prompt"] != data.eval["prompt"]


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


def greedy_by_hand(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """The argmax token after each full forward of the prompt alone (no padding, no KV cache), until EOS."""
    ids, new = tok(prompt).input_ids, []
    with torch.no_grad():
        while len(new) < max_new_tokens and tok.eos_token_id not in new:
            new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
    return new


def test_greedy_generation_equals_an_argmax_decode_of_each_prompt_alone():
    """In one left-padded, KV-cached batch; this seed's model ends the first prompt with EOS at once and
    runs the second to the token limit (the top two logits differ by 0.087 at least, far above fp32 noise)."""
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=1).eval()
    prompts, limit = ["12+34=", "7+5="], 8
    batch = sample(
        HFEngine.on(model, tok, [tok.eos_token_id]), prompts, {}, Sampling(n=1, max_new_tokens=limit, greedy=True)
    )
    expected = [greedy_by_hand(model, tok, p, limit) for p in prompts]
    assert [len(e) for e in expected] == [1, limit] and expected[0] == [tok.eos_token_id]
    for ids, mask, new in zip(batch.completion_ids, batch.completion_mask, expected):
        assert ids.tolist() == new + [tok.pad_token_id] * (limit - len(new))
        assert mask.tolist() == [1.0] * len(new) + [0.0] * (limit - len(new))
    assert batch.truncated.tolist() == [False, True]
    assert batch.completions == [tok.decode(e, skip_special_tokens=True) for e in expected]
    assert batch.logp is None  # no behaviour log-probs for the argmax
