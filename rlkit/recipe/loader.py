"""YAML -> :class:`Recipe`, with dotted overrides and errors that say where.

Errors name the file, the key path (``trainer.lr``), the YAML line and, for an unknown key, the closest
valid key. Everything here runs without loading a model (a local model folder's config and tokenizer
files are read, user verifier modules imported), so ``rlkit check`` is fast.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rewards.registry import get_verifier
from rewards.scoring import with_labels
from rlkit.builtins import BUILTIN_MODELS, BUILTIN_TOKENIZERS
from rlkit.objectives import KINDS, build_objective, build_part, resolve_spec
from rlkit.objectives.registry import TEACHER_NEEDS, part_class
from rlkit.recipe.model_check import check_model_folder, same_tokenizer
from rlkit.recipe.schema import Recipe


class RecipeError(ValueError):
    """A recipe problem, already phrased for the user (one line per problem)."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``trainer.lr=1e-4`` -> (["trainer", "lr"], 0.0001); the value is read as YAML."""
    key, equals, raw = text.partition("=")
    path = key.strip().split(".")
    if not equals or not all(path):
        raise RecipeError(f"override {text!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as e:
        raise RecipeError(f"override {text!r}: the value is not valid YAML: {_yaml_problem(e)}") from None
    if isinstance(value, str):
        value = _number_or_str(value)
    return path, value


def _number_or_str(value: str):
    """YAML 1.1 reads ``1e-4`` as a string; recipes mean a number."""
    try:
        return float(value) if any(c in value for c in ".eE") else value
    except ValueError:
        return value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {'.'.join(path)}: {key!r} is not a section")
    node[path[-1]] = value


def key_locations(text: str, source: str) -> dict[tuple, str]:
    """Map each key path in the YAML text to ``source:line`` (lists use integer indices). A key given
    twice in one mapping is an error: YAML would silently keep only the last one."""
    where: dict[tuple, str] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = path + (key_node.value,)
                line = f"{source}:{key_node.start_mark.line + 1}"
                if sub in where:
                    raise RecipeError(f"{line}: {'.'.join(map(str, sub))}: duplicate key (also on line "
                                      f"{where[sub].rsplit(':', 1)[1]})")
                where[sub] = line
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                where[path + (i,)] = f"{source}:{item.start_mark.line + 1}"
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return where


class Locator:
    """Says where a key path came from: an override, or the nearest key in a recipe file."""

    def __init__(self, source: str, locations: dict[tuple, str], overrides: list[str]):
        self.source, self.locations, self.overrides = source, locations, overrides

    def __call__(self, loc: tuple) -> str:
        path = ".".join(map(str, loc))
        given = [o for o in self.overrides if path.startswith(o.split("=", 1)[0])]
        if given:
            return f"override {given[0]!r}"
        return next((self.locations[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in self.locations),
                    self.source)


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[tuple, str]]:
    """A recipe file's data and key locations, with its ``base:`` recipe (if any) merged underneath;
    ``chain`` holds the recipes whose ``base:`` led here, to name a cycle."""
    data, locations = parse_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data, locations
    where = f"{locations[('base',)]}: base"
    if not isinstance(base, str):
        raise RecipeError(f"{where}: should be a recipe file path (relative to this recipe), got {type(base).__name__}")
    base_path, chain = path.parent / base, chain + (path,)  # relative to this recipe's folder
    if base_path.resolve() in {p.resolve() for p in chain}:
        raise RecipeError(f"{where}: base recipes form a cycle: {' -> '.join(map(str, chain + (base_path,)))}")
    if not base_path.is_file():
        raise RecipeError(f"{where}: base recipe {str(base_path)!r} not found")
    base_data, base_locations = read_yaml(base_path, chain)
    return deep_merge(base_data, data), {**base_locations, **locations}


def parse_yaml(path: Path) -> tuple[dict, dict[tuple, str]]:
    """One recipe file's mapping and key locations; any problem is one line naming the file."""
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text()
        data = yaml.safe_load(text) or {}
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (UTF-8)") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{_yaml_where(e, path)}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data, key_locations(text, str(path))


def _yaml_where(error: yaml.YAMLError, path: Path) -> str:
    mark = getattr(error, "problem_mark", None)
    return f"{path}:{mark.line + 1}" if mark else str(path)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What PyYAML says, in one line (its message spans several, with a copy of the line)."""
    if isinstance(error, yaml.MarkedYAMLError):
        column = f" (column {error.problem_mark.column + 1})" if error.problem_mark else ""
        return ": ".join(filter(None, (error.context, error.problem))) + column
    return " ".join(str(error).split())


def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The schema model that holds the last key of ``loc`` (to suggest a close valid key)."""
    model: Any = Recipe
    for key in loc[:-1]:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
        for arg in getattr(model, "__args__", ()):  # Optional[X] / list[X]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def describe_errors(error: ValidationError, where: Locator, prefix: tuple = (),
                    model: type[BaseModel] | None = None) -> str:
    """One line per problem; ``prefix`` is the key path of the validated model (default: the recipe),
    ``model`` the class whose fields are suggested for an unknown key (default: found from the path)."""
    out = []
    for e in error.errors():
        loc = prefix + tuple(e["loc"])
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            model = model or _model_at(loc)
            close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields) if model else [], n=1)
            message = "unknown key" + (f"; did you mean '{close[0]}'?" if close else "")
        elif e["type"] == "missing":
            message = "required key is missing"
        out.append(f"{where(loc)}: {'.'.join(map(str, loc))}: {message}")
    return "\n".join(out)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read (with its ``base:`` chain), override and validate a recipe; raise :class:`RecipeError`
    naming every problem with its file and line (or override)."""
    data, locations = read_yaml(Path(path))
    for item in overrides:
        apply_override(data, *parse_override(item))
    where = Locator(str(path), locations, list(overrides))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe_errors(e, where)) from None
    check_model(recipe, where)
    check_objective(recipe, where)
    check_teacher(recipe, where)
    check_rewards(recipe, where)
    return recipe


def check_model(recipe: Recipe, where: Locator) -> None:
    """Read a local model folder's config and tokenizer files (not its weights), so a folder that cannot
    work fails here. The built-in models are consistent by construction."""
    if recipe.model.path in BUILTIN_MODELS:
        return
    try:
        check_model_folder(recipe.model.path)
    except ValueError as e:
        raise RecipeError(f"{where(('model', 'path'))}: model.path: {e}") from None


def check_teacher(recipe: Recipe, where: Locator) -> None:
    """An objective that distills needs ``teacher:``, with the model's tokenizer (read from the tokenizer
    files, or known for the built-in models), so a mismatch fails here and not after loading weights."""
    needs = build_objective(recipe.objective).needs
    if recipe.teacher is None:
        if needs & TEACHER_NEEDS:
            raise RecipeError(f"{where(('objective',))}: objective: it distills from a teacher; add a teacher: "
                              "section (e.g. teacher: {path: builtin:tiny-teacher})")
        return
    student, teacher = recipe.model.path, recipe.teacher.path
    loc = where(("teacher", "path"))
    if student in BUILTIN_MODELS or teacher in BUILTIN_MODELS:
        if BUILTIN_TOKENIZERS.get(student, student) != BUILTIN_TOKENIZERS.get(teacher, teacher):
            raise RecipeError(f"{loc}: teacher.path: {teacher} does not share the tokenizer of model.path {student}")
        return
    try:
        check_model_folder(teacher)
    except ValueError as e:
        raise RecipeError(f"{loc}: teacher.path: {e}") from None
    difference = same_tokenizer(student, teacher)
    if difference is not None:
        raise RecipeError(f"{loc}: teacher.path: the teacher's tokenizer differs from the model's: {difference}")


def check_objective(recipe: Recipe, where: Locator) -> None:
    """Build every part of the objective, so a bad part or option fails here, not after loading models."""
    try:
        spec = resolve_spec(recipe.objective)
    except (KeyError, ValueError) as e:
        raise RecipeError(f"{where(('objective',))}: objective: {e.args[0]}") from None
    for kind in KINDS:
        entries = spec[kind] if isinstance(spec.get(kind), list) else [spec.get(kind)]
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            loc = ("objective", kind, i) if isinstance(spec[kind], list) else ("objective", kind)
            try:
                build_part(kind, entry)
            except ValidationError as e:
                raise RecipeError(describe_errors(e, where, loc, part_class(kind, entry["type"]))) from None
            except (KeyError, ValueError, TypeError, ImportError) as e:
                raise RecipeError(f"{where(loc)}: {'.'.join(map(str, loc))}: {e.args[0] if e.args else e}") from None


def check_rewards(recipe: Recipe, where: Locator) -> None:
    """Resolve every verifier (importing user modules, as training will), so a misspelt name or a bad
    import path fails here rather than after the models are loaded."""
    labels = [spec.label for spec in with_labels(recipe.rewards)]
    for i, spec in enumerate(recipe.rewards):
        try:
            get_verifier(spec.verifier)
        except (KeyError, FileNotFoundError, ImportError, TypeError) as e:
            raise RecipeError(f"{where(('rewards', i, 'verifier'))}: rewards.{i}.verifier: {e.args[0]}") from None
        if labels[i] in labels[:i]:  # metrics are keyed by label; the scorer refuses duplicates
            raise RecipeError(f"{where(('rewards', i))}: rewards.{i}: same label {labels[i]!r} as rewards."
                              f"{labels.index(labels[i])}; set 'name' to tell them apart")
