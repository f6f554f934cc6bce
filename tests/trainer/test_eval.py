"""The held-out evaluation (docs/evaluation.md): the metric the recipe names, pass@k and mean@k on seeded
samples, `rlkit check`'s refusal of a metric that names no reward, and k = 1 as before."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rlkit.cli import main
from rlkit.data import tokenize_prompts
from rlkit.models import eos_token_ids, load_model, load_tokenizer, resolve_model_path
from rlkit.plot import metric_label
from rlkit.recipe import RecipeError, load_recipe
from rlkit.rollout import HFEngine, Sampling
from rlkit.rollout.hf import SeededSampling
from rlkit.trainer import Trainer, loop
from rlkit.trainer.evaluation import pass_at_k
from tests.trainer.parity_verifier import odd_code_sum, odd_length

ROOT = Path(__file__).parents[2]
# two verifiers that vary on an untrained model; the metric is never the first unless a test says so
TWO_VERIFIERS = (
    "rewards=[{verifier: tests/trainer/parity_verifier.py:odd_code_sum}, "
    "{verifier: tests/trainer/parity_verifier.py:odd_length}]"
)
SMALL = [
    "model.warm_start=null",
    "data.eval_size=7",
    "trainer.prompts_per_step=4",
    "rollout.samples_per_prompt=2",
    "trainer.save_every=0",
    "log.trackers=[]",
    TWO_VERIFIERS,
]


@pytest.fixture
def make_trainer(tmp_path):
    """Trainers of the quickstart on the untrained builtin:tiny with ``overrides``; closed afterwards."""
    made = []

    def make(*overrides):
        made.append(Trainer(load_recipe("recipes/quickstart.yaml", [*SMALL, *overrides, f"output_dir={tmp_path}"])))
        return made[-1]

    yield make
    for trainer in made:
        trainer.engine.close()
        trainer.log.close()
        trainer.scorer.close()


def recorded(trainer, monkeypatch) -> list:
    """The (sampling, batch) of every generate call the trainer's evaluation makes, appended as it runs."""
    calls = []
    sample = trainer._sample

    def recording(prompts, columns, sampling):
        out = sample(prompts, columns, sampling)
        calls.append((sampling, out))
        return out

    monkeypatch.setattr(trainer, "_sample", recording)
    return calls


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)  # 1 - C(3,1)/C(5,1): the pass rate
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # C(3,2) = 3, C(5,2) = 10
    assert pass_at_k(10, 3, 3) == pytest.approx(1 - 35 / 120)  # C(7,3) = 35, C(10,3) = 120
    assert pass_at_k(5, 2, 4) == 1.0  # 4 draws from 5 with 3 failures always hold a pass
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0  # n = k: any pass
    for n, c, k in ((3, 4, 1), (3, 1, 4), (3, 1, 0), (3, -1, 1)):
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(n, c, k)


def test_the_logged_metric_is_the_named_verifier_not_the_first(make_trainer, monkeypatch, tmp_path):
    trainer = make_trainer("eval.metric=odd_length")
    calls = recorded(trainer, monkeypatch)
    result = trainer._log_eval(3)
    [(sampling, out)] = calls  # 7 prompts, one process: one call, no padding rows
    assert sampling.greedy and sampling.n == 1 and len(out) == 7
    named = odd_length(out.prompts, out.completions)
    first = odd_code_sum(out.prompts, out.completions)
    assert sum(named) != sum(first)  # the two verifiers disagree, so the test tells which one is logged
    assert (result.metric, result.k, result.pass_at_k) == ("odd_length", 1, None)
    assert result.score == pytest.approx(sum(named) / 7, rel=1e-6)
    assert result.reward == pytest.approx((sum(named) + sum(first)) / 7, rel=1e-6)
    [line] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert line == {"step": 3, "eval/score": result.score, "eval/reward": result.reward}


def old_evaluate(scorer, outs) -> tuple[float, float]:
    """Trainer.evaluate's sums at 5a3055b, before eval.metric: the first verifier's mean and the total's."""
    first, total = torch.zeros(2), torch.zeros(2)
    for out in outs:
        scores = scorer(out.prompts, out.completions, out.columns)
        head = [s for s in scores.per_verifier[scorer.specs[0].label] if s is not None]
        first += torch.tensor([sum(head), len(head)])
        valid = [s for s in scores.total if not math.isnan(s)]
        total += torch.tensor([sum(valid), len(valid)])
    return float(first[0] / first[1].clamp(min=1)), float(total[0] / total[1].clamp(min=1))


def test_k_1_is_todays_greedy_evaluation_bit_for_bit(make_trainer, monkeypatch):
    """Naming the first verifier with k = 1 reproduces the old formula exactly, over several generate calls."""
    monkeypatch.setattr(loop, "EVAL_CHUNK", 3)
    trainer = make_trainer("eval.metric=odd_code_sum")
    calls = recorded(trainer, monkeypatch)
    result = trainer.evaluate()
    assert [len(out) for _, out in calls] == [3, 3, 1]
    assert all(s.greedy and s.n == 1 and s.seed is None for s, _ in calls)
    assert (result.score, result.reward) == old_evaluate(trainer.scorer, [out for _, out in calls])
    assert 0 < result.score < 1


METRICS = {  # eval.metric -> each completion's score, recomputed from the verifiers themselves
    "odd_length": odd_length,
    "total": lambda p, c: [a + b for a, b in zip(odd_code_sum(p, c), odd_length(p, c))],
}


@pytest.mark.parametrize("metric,threshold", [("odd_length", 1.0), ("total", 2.0)])
def test_pass_at_k_and_mean_at_k_on_seeded_samples(make_trainer, monkeypatch, metric, threshold):
    """k = 4 samples of each of the 7 prompts: mean@k and pass@k recomputed from the completions (a pass:
    odd_length 1, or a total of 2, both verifiers 1); the same completions however the prompts are cut
    into generate calls."""
    trainer = make_trainer(
        f"eval.metric={metric}", "eval.k=4", f"eval.pass_threshold={threshold}", "eval.temperature=1.5"
    )
    calls = recorded(trainer, monkeypatch)
    result = trainer.evaluate()
    [(sampling, out)] = calls
    assert (sampling.n, sampling.temperature, sampling.seed, sampling.greedy) == (4, 1.5, 0, False)
    assert any(len(set(out.completions[i : i + 4])) > 1 for i in range(0, 28, 4))  # sampled, not greedy
    scores = METRICS[metric](out.prompts, out.completions)
    mean_at_k = sum(scores) / 28
    passed = sum(any(s >= threshold for s in scores[i : i + 4]) for i in range(0, 28, 4)) / 7
    assert 0 < passed < 1 or metric == "odd_length"  # total: a threshold that some prompts miss
    assert result.score == pytest.approx(mean_at_k, rel=1e-6) and result.pass_at_k == pytest.approx(passed, rel=1e-6)
    if metric == "odd_length":  # scores in {0, 1}: a prompt's pass (any) is at least its mean
        assert passed >= mean_at_k and passed > 0
    assert result.metrics() == {
        "eval/score": result.score,
        "eval/reward": result.reward,
        "eval/pass@4": result.pass_at_k,
    }
    assert result.describe() == f"{metric} mean@4 {result.score:.3f}, pass@4 {passed:.3f}"

    monkeypatch.setattr(loop, "EVAL_CHUNK", 3)  # prompts 0-2, 3-5, 6 in three calls
    again = trainer.evaluate()
    assert [len(o) for _, o in calls[1:]] == [12, 12, 4]
    assert [c for _, o in calls[1:] for c in o.completions] == out.completions
    assert again == result


@pytest.fixture(scope="module")
def tiny_engine():
    path = resolve_model_path("builtin:tiny")
    tokenizer = load_tokenizer(path)
    model = load_model(path).eval()
    return HFEngine.on(model, tokenizer, eos_token_ids(tokenizer, model)), tokenizer


def rows_of(engine, tokenizer, prompts: list[str], sampling: Sampling) -> dict[str, list[list[int]]]:
    """Each prompt's sampled token ids, from one generate call on ``prompts``."""
    out = engine.generate(tokenize_prompts(prompts, tokenizer), sampling).ids.tolist()
    n = sampling.n
    return {p: out[i * n : (i + 1) * n] for i, p in enumerate(prompts)}


def test_a_seeded_prompt_samples_the_same_in_any_batch(tiny_engine):
    """With a seed a prompt's completions do not depend on the prompts beside it; without, they do (the
    engine's one stream is drawn in batch order), which is what the seed is for."""
    engine, tokenizer = tiny_engine
    seeded = Sampling(n=3, max_new_tokens=5, temperature=1.0, seed=7)
    alone = rows_of(engine, tokenizer, ["12+7="], seeded)
    together = rows_of(engine, tokenizer, ["3+4=", "12+7=", "100+1="], seeded)
    assert together["12+7="] == alone["12+7="]
    assert len({tuple(r) for r in alone["12+7="]}) > 1  # three different samples
    assert rows_of(engine, tokenizer, ["12+7="], Sampling(n=3, max_new_tokens=5, seed=8)) != alone
    unseeded = Sampling(n=3, max_new_tokens=5, temperature=1.0)
    torch.manual_seed(0)
    alone = rows_of(engine, tokenizer, ["12+7="], unseeded)
    torch.manual_seed(0)
    together = rows_of(engine, tokenizer, ["3+4=", "12+7=", "100+1="], unseeded)
    assert together["12+7="] != alone["12+7="]


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_seeded_sampling_draws_from_the_tempered_nucleus(top_p):
    """Greedy decoding on SeededSampling's scores picks token v with probability softmax(s / T)_v, restricted
    to the top-p nucleus and renormalised: frequencies over 20000 rows within 5 standard errors."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    T, rows = 0.7, 20000
    sampler = SeededSampling(list(range(rows)), T, top_p, torch.device("cpu"))
    picks = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.expand(rows, -1)).argmax(-1)
    p = torch.softmax(logits[0] / T, -1)
    keep = p.cumsum(0) - p < top_p  # the nucleus: the most likely tokens until their mass reaches top_p
    expected = torch.where(keep, p, 0.0) / p[keep].sum()
    assert keep.sum() == (5 if top_p == 1 else 2)
    frequency = torch.bincount(picks, minlength=5).double() / rows
    assert torch.all((frequency - expected).abs() <= 5 * (expected * (1 - expected) / rows).sqrt() + 1e-12)


def test_a_run_records_the_metric_and_pass_at_k_in_its_summary(make_trainer, tmp_path, capsys):
    summary = make_trainer("eval.metric=odd_length", "eval.k=2", "trainer.steps=1", "log.every=1").train()
    for key in ("eval_start", "eval_end"):
        assert set(summary[key]) == {"metric", "k", "score", "reward", "pass_at_k", "tool_use", "tool_use_of_passing"}
        assert summary[key]["tool_use"] is None and summary[key]["tool_use_of_passing"] is None  # single-turn
        assert summary[key]["metric"] == "odd_length" and summary[key]["k"] == 2
        assert summary[key]["pass_at_k"] >= summary[key]["score"]  # a verifier scoring 0 or 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "eval/pass@2" in m] == [0, 1]
    assert metric_label([tmp_path]) == "odd_length, mean@2"


def test_plots_name_the_runs_metrics(tmp_path):
    def run(name, **eval_end):
        (tmp_path / name).mkdir()
        if eval_end:
            (tmp_path / name / "summary.json").write_text(json.dumps({"eval_end": eval_end}))
        return tmp_path / name

    greedy = run("a", metric="exact_number", k=1, score=0.5, reward=0.5, pass_at_k=None)
    sampled = run("b", metric="total", k=4, score=0.5, reward=0.5, pass_at_k=0.7)
    unfinished = run("c")
    assert metric_label([greedy, unfinished]) == "exact_number, greedy"
    assert metric_label([greedy, greedy, sampled]) == "exact_number, greedy / total, mean@4"
    assert metric_label([unfinished]) == "eval/score"


@pytest.mark.parametrize(
    "recipe,names",
    [
        ("recipes/quickstart.yaml", ["total", "exact_number"]),
        ("recipes/presets/dapo.yaml", ["total", "exact_number", "overlong"]),
    ],
)
def test_check_refuses_a_metric_that_names_no_reward(recipe, names, capsys):
    assert main(["check", recipe, "eval.metric=accuracy"]) == 2
    err = capsys.readouterr().err
    assert (
        f"override 'eval.metric=accuracy': eval.metric: 'accuracy' names no reward of this recipe; choose one of {names}"
        in err
    )


def test_check_says_the_metric(capsys):
    assert main(["check", "recipes/presets/dapo.yaml"]) == 0
    assert "held-out exact_number, output_dir" in capsys.readouterr().out
    assert main(["check", "recipes/presets/dapo.yaml", "eval.metric=total", "eval.k=8"]) == 0
    assert "held-out total pass@8, output_dir" in capsys.readouterr().out


def test_check_takes_reward_labels_and_refuses_the_reserved_one():
    named = "rewards=[{verifier: exact_number, name: correct}, {verifier: tests/trainer/parity_verifier.py:odd_length}]"
    for metric in ("correct", "odd_length", "total"):
        assert load_recipe("recipes/quickstart.yaml", [named, f"eval.metric={metric}"]).eval.metric == metric
    with pytest.raises(
        RecipeError, match=r"eval.metric: 'exact_number' names no reward .*\['total', 'correct', 'odd_length'\]"
    ):
        load_recipe("recipes/quickstart.yaml", [named, "eval.metric=exact_number"])  # its label is 'correct'
    with pytest.raises(RecipeError, match="rewards.0: the label 'total' names the weighted total in eval.metric"):
        load_recipe("recipes/quickstart.yaml", ["rewards=[{verifier: exact_number, name: total}]"])


def test_every_shipped_recipe_names_its_metric():
    files = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(files) == 16
    for path in files:
        metric = yaml.safe_load(path.read_text())["eval"]["metric"]
        assert load_recipe(path).eval.metric == metric == "exact_number", path
