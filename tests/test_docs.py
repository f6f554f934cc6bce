"""The README's commands stay true: CI runs exactly its test command, and the recipe it shows exists."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_quickstart_command_runs_the_shipped_recipe():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    quickstart = next(c for c in commands if "rlkit train" in c)
    recipe = quickstart.split("rlkit train ")[1].split()[0]
    assert (ROOT / recipe).is_file()
