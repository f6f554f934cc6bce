"""The README and docs/ stay true: CI runs exactly the README's test commands (the main suite, then vLLM's),
its quickstart command runs a shipped recipe (which tests/test_recipe.py checks), and every file of the
repository that they link to or name exists."""

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FOLDERS = ("recipes/", "launch/", "docs/", "rlkit/", "rewards/", "tests/", "benchmarks/", ".ci/")  # the tracked ones


def test_ci_runs_the_readme_test_commands_in_order():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    tests = [c for c in commands if "pytest" in c]
    assert len(tests) == 2 and tests[1].endswith("pytest -q -m vllm")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if "pytest" in line] == tests


def test_readme_quickstart_command_runs_a_shipped_recipe():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    quickstart = next(c for c in commands if "rlkit train" in c)
    recipe = quickstart.split("rlkit train ")[1].split()[0]
    assert recipe.startswith("recipes/") and (ROOT / recipe).is_file()


def missing_files(doc: Path) -> list[Path]:
    """What ``doc`` names that does not exist: its relative markdown links (from its folder) and its `code`
    spans that start with one of the repository's folders (from the root; a ``:function`` or ``::test``
    suffix dropped, a glob matching nothing)."""
    text = doc.read_text()
    links = [(doc.parent / target).resolve() for target in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in target]
    spans = [ROOT / span.split(":")[0] for span in re.findall(r"`([^`\s]+)`", text) if span.startswith(FOLDERS)]
    return [path for path in links + spans if not glob.glob(str(path))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_file_the_docs_name_exists(doc):
    assert missing_files(doc) == []


def test_a_missing_file_or_link_target_is_found(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "`rlkit/cli.py:main`, `recipes/presets/*.yaml`, [itself](doc.md), `rlkit/gone.py:main`, [a](gone.md)"
    )
    assert missing_files(doc) == [tmp_path / "gone.md", ROOT / "rlkit" / "gone.py"]
