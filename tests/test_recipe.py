"""Recipes: every shipped recipe validates; malformed ones fail naming file, line and key path,
before any model is loaded."""

import subprocess
import sys
from pathlib import Path

import pytest

import rlkit.models
from rlkit.cli import main
from rlkit.recipe import RecipeError, load_recipe

ROOT = Path(__file__).parents[1]
RECIPES = sorted(p.relative_to(ROOT) for p in (ROOT / "recipes").rglob("*.yaml"))


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded while checking a recipe")

    monkeypatch.setattr(rlkit.models, "load_model", refuse)
    monkeypatch.setattr(rlkit.models, "builtin_tiny_path", refuse)


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_shipped_recipe_checks(recipe, in_root, capsys):
    assert main(["check", str(recipe)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_shipped_recipe_starts_with_its_command(recipe):
    first = (ROOT / recipe).read_text().splitlines()[0]
    assert first.startswith(f"# rlkit train {recipe}")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def check_fails(path, *overrides) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, list(overrides))
    return str(e.value)


def test_unknown_key_names_file_line_path_and_closest_key(tmp_path):
    path = write(tmp_path, "output_dir: out\ntrainer:\n  steps: 3\n  lrr: 0.1\n")
    assert check_fails(path) == f"{path}:4: trainer.lrr: unknown key; did you mean 'lr'?"


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, "output_dir: out\nrollout:\n  samples_per_prompt: many\n")
    message = check_fails(path)
    assert message.startswith(f"{path}:3: rollout.samples_per_prompt: Input should be a valid integer")


def test_missing_data_file_names_the_key(tmp_path):
    path = write(tmp_path, "output_dir: out\ndata:\n  task: null\n  train: nowhere/train.jsonl\n")
    message = check_fails(path)
    assert message.startswith(f"{path}:4: data.train: ")
    assert "'nowhere/train.jsonl' does not exist" in message


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "trainer: {steps: 3}\n")
    assert check_fails(path) == f"{path}: output_dir: required key is missing"


def test_objective_part_option_is_checked_with_its_path(tmp_path):
    path = write(tmp_path, "output_dir: out\nobjective:\n  preset: grpo\n  surrogate:\n    eps_hihg: 0.3\n")
    assert check_fails(path) == f"{path}:5: objective.surrogate.eps_hihg: unknown key; did you mean 'eps_high'?"


def test_unknown_preset(tmp_path):
    message = check_fails(write(tmp_path, "output_dir: out\nobjective: {preset: grpoo}\n"))
    assert "unknown objective preset 'grpoo'" in message


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, "output_dir: out\n")
    assert check_fails(path, "trainer.steps=x").startswith("override 'trainer.steps=x': trainer.steps: ")


def test_overrides_and_base_merge(tmp_path):
    (tmp_path / "base.yaml").write_text("output_dir: a\ntrainer: {steps: 7, lr: 0.1}\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrainer: {steps: 9}\n")
    recipe = load_recipe(child, ["trainer.lr=1e-4", "objective.kl.beta=0"])
    assert (recipe.trainer.steps, recipe.trainer.lr, recipe.output_dir) == (9, 1e-4, "a")
    assert recipe.objective == {"kl": {"beta": 0}}  # the preset (grpo by default) is applied when built


def test_bare_no_is_mixed_precision_no(tmp_path):
    """YAML reads `no` as false; accelerate's name for full precision must still work, in files and overrides."""
    path = write(tmp_path, "output_dir: out\ntrainer: {mixed_precision: no}\n")
    assert load_recipe(path).trainer.mixed_precision == "no"
    assert load_recipe(path, ["trainer.mixed_precision=bf16"]).trainer.mixed_precision == "bf16"
    assert load_recipe(path, ["trainer.mixed_precision=no"]).trainer.mixed_precision == "no"
    assert "trainer.mixed_precision" in check_fails(path, "trainer.mixed_precision=yes")


def test_cli_check_exits_non_zero_with_the_message():
    result = subprocess.run(
        [sys.executable, "-m", "rlkit.cli", "check", "recipes/quickstart.yaml", "trainer.lrr=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "override 'trainer.lrr=1': trainer.lrr: unknown key; did you mean 'lr'?" in result.stderr
