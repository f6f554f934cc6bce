"""What a part needs is a :class:`Need` member; a user's part may declare the strings, and an unknown one
stops the build with the part and the need named (in a recipe: with the key path)."""

import textwrap

import pytest

from rlkit.objectives import PARTS, Need, build_objective
from rlkit.recipe import load_recipe
from rlkit.recipe.loader import RecipeError


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``NAME.py`` with a selection part ``Part`` whose needs are ``needs``; returns its import path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, needs: set[str]) -> str:
        (tmp_path / f"{name}.py").write_text(
            textwrap.dedent(f"""
                from rlkit.objectives.selection import Selection

                class Part(Selection):
                    needs = frozenset({sorted(needs)!r})

                    def select(self, mask, batch, metrics):
                        return mask
            """)
        )
        return f"{name}:Part"

    return write


def test_every_registered_part_needs_members_only():
    needs = {need for parts in PARTS.values() for cls in parts.values() for need in cls.needs}
    assert needs and all(type(need) is Need for need in needs)


def test_a_user_part_may_declare_needs_as_strings(user_module):
    objective = build_objective({"preset": "dr_grpo", "selection": [{"type": user_module("reads", {"entropy"})}]})
    (part,) = objective.selection
    assert part.needs == {Need.ENTROPY} and all(type(need) is Need for need in part.needs)
    assert Need.ENTROPY in objective.needs


def test_an_unknown_need_is_refused_when_the_objective_is_built(user_module):
    path = user_module("misspelt", {"entropy", "logp_reff"})
    with pytest.raises(ValueError, match=r"misspelt\.Part\.needs: unknown need 'logp_reff'; the trainer provides"):
        build_objective({"preset": "dr_grpo", "selection": [{"type": path}]})


def test_an_unknown_need_in_a_recipe_names_the_key(user_module):
    path = user_module("misspelt_in_recipe", {"logits_teacher"})
    with pytest.raises(RecipeError, match=r"objective\.selection\.0: .*unknown need 'logits_teacher'"):
        load_recipe("recipes/quickstart.yaml", [f"objective.selection=[{{type: '{path}'}}]", "output_dir=/tmp/x"])
