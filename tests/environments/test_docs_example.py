"""The example environment of docs/environments.md, run from the doc's own text, so the doc stays true."""

import re
from pathlib import Path

from rlkit.environments import Environment
from rlkit.models import build_char_tokenizer
from rlkit.rollout import Sampling, run_episodes
from tests.rollout.test_episodes import Scripted, chars, setup_for, spec

DOC = Path(__file__).parents[2] / "docs" / "environments.md"


def doc_module() -> dict:
    """The namespace of the doc's ``# my_envs.py`` block."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if b.startswith("# my_envs.py"))
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_second_chance_retries_once_and_pays_the_first_try_bonus():
    SecondChance = doc_module()["SecondChance"]
    assert issubclass(SecondChance, Environment)
    tok = build_char_tokenizer()
    prompts, columns = [[{"role": "user", "content": "3*4="}]] * 3, {"answer": ["12"] * 3}
    # episode 0 right at once; 1 wrong, then right; 2 wrong twice
    script = [[chars(tok, "12"), chars(tok, "13"), chars(tok, "13")], [chars(tok, "12"), chars(tok, "14")]]
    out = run_episodes(
        Scripted(setup_for(tok), script), spec(SecondChance, max_turns=2), prompts, columns, Sampling(1, 4)
    )
    assert [e.turns for e in out.episodes] == [1, 2, 2]
    assert [e.env_reward for e in out.episodes] == [0.5, 0.0, 0.0]
    assert out.completions == ["12", "12", "14"] and not out.truncated.any()
    assert out.episodes[1].transcript[1] == {"role": "user", "content": "wrong, try again"}
