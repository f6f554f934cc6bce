"""The README's commands stay true: CI runs exactly its test commands (the main suite, then vLLM's), and
the recipe it shows exists."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_commands_in_order():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    tests = [c for c in commands if "pytest" in c]
    assert len(tests) == 2 and tests[1].endswith("pytest -q -m vllm")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if "pytest" in line] == tests


def test_readme_quickstart_command_runs_the_shipped_recipe():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    quickstart = next(c for c in commands if "rlkit train" in c)
    recipe = quickstart.split("rlkit train ")[1].split()[0]
    assert (ROOT / recipe).is_file()
