"""YAML -> :class:`Recipe`, with dotted overrides and errors that say where.

Errors name the file, the key path (``trainer.lr``), the YAML line and, for an unknown key, the closest
valid key. Everything here runs without loading a model (a local model folder's config and tokenizer
files are read, user verifier modules imported), so ``rlkit check`` is fast.
"""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rewards.registry import get_verifier
from rewards.scoring import RewardSpec, with_labels
from rlkit.builtins import BUILTIN_MODELS, BUILTIN_TASK_COLUMNS, BUILTIN_TASK_ROWS, BUILTIN_TOKENIZERS
from rlkit.objectives import KINDS, build_objective, build_part, resolve_spec
from rlkit.objectives.registry import TEACHER_NEEDS, part_class
from rlkit.recipe.data_check import DataFileError, Reader, check_columns, check_source, plural, verifier_columns
from rlkit.recipe.model_check import check_model_folder, positions_of, same_tokenizer
from rlkit.recipe.schema import TOTAL, DataSource, Recipe
from rlkit.rollout.engine import engine_class
from rlkit.trackers import missing_library


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
                    raise RecipeError(
                        f"{line}: {'.'.join(map(str, sub))}: duplicate key (also on line "
                        f"{where[sub].rsplit(':', 1)[1]})"
                    )
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

    def __call__(self, loc: tuple, *related: tuple) -> str:
        """Where ``loc`` is set: the last override that set it, else the nearest key in the recipe files. A
        problem of several keys (``related``: the others) names an override that set any of them: the
        override is what changed the recipe of the files."""
        given = next((o for path in (loc, *related) for o in reversed(self.overrides) if _overlaps(o, path)), None)
        if given is not None:
            return f"override {given!r}"
        return next((self.locations[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in self.locations), self.source)


def _overlaps(override: str, loc: tuple) -> bool:
    """Whether ``override`` set ``loc``, a section holding it, or a key inside it (a problem found with a
    whole section, such as two of its keys that disagree)."""
    key, path = override.split("=", 1)[0].strip().split("."), [str(k) for k in loc]
    n = min(len(key), len(path))
    return key[:n] == path[:n]


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


def describe_errors(
    error: ValidationError, where: Locator, prefix: tuple = (), model: type[BaseModel] | None = None
) -> str:
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


def load_recipe(path: str | Path, overrides: Sequence[str] = (), make_output_dir: bool = False) -> Recipe:
    """Read (with its ``base:`` chain), override and validate a recipe; raise :class:`RecipeError`
    naming every problem with its file and line (or override). ``make_output_dir``: create output_dir (a
    run writes there next); else only make sure it could be, leaving nothing behind."""
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
    check_eval(recipe, where)
    check_engine(recipe, where)
    check_environment(recipe, where)
    check_training(recipe, where)
    check_data(recipe, where)
    check_trackers(recipe, where)
    check_output_dir(recipe, where, make_output_dir)
    return recipe


def _error(where: Locator, loc: tuple, message: str, *related: tuple) -> RecipeError:
    """``file:line: key.path: message``, or ``override '...': ...`` where an override set ``loc`` or a
    ``related`` key (the others the problem is about)."""
    return RecipeError(f"{where(loc, *related)}: {'.'.join(map(str, loc))}: {message}")


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
            raise RecipeError(
                f"{where(('objective',))}: objective: it distills from a teacher; add a teacher: "
                "section (e.g. teacher: {path: builtin:tiny-teacher})"
            )
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
    bonus = spec["entropy_bonus"]
    if isinstance(bonus, bool) or not isinstance(bonus, (int, float)) or bonus < 0:
        raise _error(
            where,
            ("objective", "entropy_bonus"),
            f"should be a number >= 0, got {bonus!r}: the loss "
            "subtracts it times the policy's entropy, so a negative one would drive the entropy down",
        )
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


def check_engine(recipe: Recipe, where: Locator) -> None:
    """Validate ``rollout.engine`` against its engine's options (importing a user's engine, as training
    will), so a misspelt option or a missing vLLM fails here."""
    loc = ("rollout", "engine")
    spec = recipe.rollout.engine
    try:
        cls = engine_class(spec.get("type", "hf"))
        cls.Options(**spec)
    except ValidationError as e:
        raise RecipeError(describe_errors(e, where, loc, cls.Options)) from None
    except (KeyError, TypeError, ImportError, AttributeError) as e:
        raise RecipeError(f"{where(loc + ('type',))}: rollout.engine.type: {e.args[0] if e.args else e}") from None


def check_environment(recipe: Recipe, where: Locator) -> None:
    """Resolve ``environment.name`` and each of ``environment.tools`` (importing a user's, as training will)
    and build every tool's schema, so a misspelt name or a tool without type hints or docstring fails here.
    Tools are offered through the chat template, so the prompts must be chat messages: the built-in
    ``builtin:addition`` task's are strings."""
    env = recipe.environment
    if env is None:
        return
    from rlkit.environments import environment_class, resolve_tool
    from rlkit.environments.spec import EnvironmentSpec

    try:
        environment_class(env.name)
    except (KeyError, TypeError, ImportError, AttributeError) as e:
        raise _error(where, ("environment", "name"), str(e.args[0] if e.args else e)) from None
    for i, tool in enumerate(env.tools):
        try:
            resolve_tool(tool)
        except (KeyError, TypeError, ImportError, AttributeError) as e:
            raise _error(where, ("environment", "tools", i), str(e.args[0] if e.args else e)) from None
    spec = EnvironmentSpec.from_config(env)
    try:
        spec.schemas()
    except Exception as e:  # transformers' TypeHintParsingException / DocstringParsingException
        raise _error(where, ("environment", "tools"), f"a tool's JSON schema: {e}") from None
    if spec.tools and recipe.data.task == "builtin:addition":
        raise _error(
            where,
            ("data", "task"),
            "builtin:addition's prompts are strings; tools are offered through the chat template, which needs "
            "chat messages (builtin:addition_chat, builtin:multiplication)",
            ("environment",),
        )


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
            raise RecipeError(
                f"{where(('rewards', i))}: rewards.{i}: same label {labels[i]!r} as rewards."
                f"{labels.index(labels[i])}; set 'name' to tell them apart"
            )


def check_eval(recipe: Recipe, where: Locator) -> None:
    """``eval.metric`` names the weighted total or one of the rewards, by the label its metrics carry."""
    labels = [spec.label for spec in with_labels(recipe.rewards)]
    if TOTAL in labels:  # the name would mean two things
        i = labels.index(TOTAL)
        raise _error(where, ("rewards", i), f"the label {TOTAL!r} names the weighted total in eval.metric; set 'name'")
    if recipe.eval.metric not in (TOTAL, *labels):
        raise _error(
            where,
            ("eval", "metric"),
            f"{recipe.eval.metric!r} names no reward of this recipe; choose one of "
            f"{[TOTAL, *labels]} ('total': the weighted total reward; the others: rewards by label)",
            ("rewards",),
        )


def check_training(recipe: Recipe, where: Locator) -> None:
    """Settings each valid alone that together train wrongly, or cannot run."""
    objective = build_objective(recipe.objective)
    if recipe.rollout.samples_per_prompt == 1 and objective.surrogate.reads_advantages():
        # a group of one has no signal: Objective.advantages gives it exactly 0, whatever the estimator
        raise _error(
            where,
            ("rollout", "samples_per_prompt"),
            f"1 sample per prompt makes every advantage 0 (the "
            f"{objective.advantage.name} advantage compares each completion with the others of its "
            f"prompt), so the policy gets no gradient at any step; sample at least 2",
            ("objective",),
        )
    positions, model_key = position_limit(recipe)
    new = recipe.completion_tokens
    if positions is not None and new >= positions:
        raise _error(
            where,
            ("rollout", "max_new_tokens") if recipe.environment is None else ("environment", "max_tokens"),
            f"{new} new tokens leave no room for a prompt in the "
            f"{positions} positions of {model_key}={_value(recipe, model_key)} (max_position_embeddings "
            f"in its config.json)",
            tuple(model_key.split(".")),
        )


def position_limit(recipe: Recipe) -> tuple[int | None, str]:
    """The fewest positions (prompt plus completion) of the models that read the sampled sequences: the
    policy (and its reference: the same model) and a teacher; with the key that names that model."""
    keys = ["model.path"] + (["teacher.path"] if _teacher_runs(recipe) else [])
    known = [(positions_of(_value(recipe, key)), key) for key in keys]
    known = [(n, key) for n, key in known if n is not None]
    return min(known) if known else (None, "model.path")


def _value(recipe: Recipe, key: str) -> str:
    section, field = key.split(".")
    return getattr(getattr(recipe, section), field)


def _teacher_runs(recipe: Recipe) -> bool:
    return recipe.teacher is not None and bool(build_objective(recipe.objective).needs & TEACHER_NEEDS)


def check_trackers(recipe: Recipe, where: Locator) -> None:
    """A tracker whose library is not installed would be left out of the run without a word (accelerate
    says so at debug level only): refuse it here, with what installs it."""
    for i, name in enumerate(recipe.log.trackers):
        problem = missing_library(name)
        if problem is not None:
            raise _error(where, ("log", "trackers", i), problem)


def check_data(recipe: Recipe, where: Locator) -> None:
    """Read the data (the built-in tasks' columns are known), so that data training would stop on, or
    silently train wrongly from, fails here; then the splits must have the rows they need."""
    readers = [_reader(i, spec) for i, spec in enumerate(recipe.rewards)]
    data = recipe.data
    rows: int | None
    if data.task is not None:
        task = data.task
        _read(where, ("data", "task"), lambda: check_columns(task, list(BUILTIN_TASK_COLUMNS[task]), readers))
        rows = BUILTIN_TASK_ROWS[task]
    else:
        assert data.train is not None  # the schema gives one of task and train
        rows = _check_source(where, "train", data.train, readers, data.columns)
        if data.eval is not None:
            _check_source(where, "eval", data.eval, readers, data.columns)
    check_splits(recipe, where, rows)


def _check_source(where: Locator, key: str, source: DataSource, readers: list[Reader], columns: dict) -> int | None:
    """Check ``data.<key>``; return its rows where known. What cannot be checked is said in a note."""
    found = _read(where, ("data", key), lambda: check_source(source, readers, columns))
    if found.unchecked is not None:
        print(f"note: {where(('data', key))}: data.{key}: {found.unchecked}", file=sys.stderr)
    return found.rows


def _reader(index: int, spec: RewardSpec) -> Reader:
    columns = verifier_columns(get_verifier(spec.verifier), spec.kwargs)
    return Reader(index, spec.label, tuple(spec.when), columns, spec.applies)


def _read(where: Locator, key: tuple, check):
    """Run a data ``check`` of the recipe key ``key``; its error names the key (``data.columns.<name>`` for
    a mapped column the data lacks, with ``key``'s name) and the reward entry involved."""
    try:
        return check()
    except DataFileError as e:
        related = [("rewards", e.reward)] if e.reward is not None else []
        if e.column is not None:
            raise _error(where, ("data", "columns", e.column), f"{'.'.join(key)}: {e}", key, *related) from None
        raise _error(where, key, str(e), *related) from None


def check_splits(recipe: Recipe, where: Locator, rows: int | None) -> None:
    """The held-out split, made as rlkit.data.load_task makes it from ``rows`` (of the built-in task or the
    train data; None where they are not counted), has rows and leaves some to train on, more than the warm
    starts validate on."""
    data = recipe.data
    if rows is None:
        return
    if data.task is not None:  # the first eval_size problems; an eval file is not read
        held_out = data.eval_size
        if held_out >= rows:
            raise _error(
                where,
                ("data", "eval_size"),
                f"{held_out} held-out problems leave none of the {rows} of {data.task} to train on",
                ("data", "task"),
            )
    elif data.eval is not None:  # the eval data is the held-out set
        held_out = 0
    else:  # a slice of the train data, at most a fifth of it
        if rows < data.eval_size:
            raise _error(
                where,
                ("data", "train"),
                f"{data.train} has {plural(rows, 'row')}, fewer than the "
                f"data.eval_size={data.eval_size} held out for evaluation; lower data.eval_size or give a "
                "data.eval file",
                ("data", "eval_size"),
            )
        held_out = min(data.eval_size, rows // 5)
        if held_out == 0:
            raise _error(
                where,
                ("data", "train"),
                f"{data.train} has {plural(rows, 'row')}: the slice held out "
                "for evaluation, a fifth of them, would be empty; give at least 5 rows or a data.eval file",
            )
    for key, warm in (
        ("model", recipe.model.warm_start),
        ("teacher", recipe.teacher.warm_start if recipe.teacher is not None and _teacher_runs(recipe) else None),
    ):
        if warm is not None and warm.val_size >= rows - held_out:
            raise _error(
                where,
                (key, "warm_start", "val_size"),
                f"{warm.val_size} validation rows leave none of "
                f"the {rows - held_out} training rows for the warm start to train on",
                ("data",),
            )


def check_output_dir(recipe: Recipe, where: Locator, keep: bool) -> None:
    """output_dir is a folder this process can create and write in. With ``keep`` the folders made stay (a
    run writes there next); without, they are removed again, so that checking leaves nothing behind."""
    folder, made = Path(recipe.output_dir), []
    try:
        for path in reversed((folder, *folder.parents)):  # outermost first; os.path's tests raise no OSError
            if os.path.exists(path) and not os.path.isdir(path):
                raise _error(where, ("output_dir",), f"{path} is a file, not a folder")
            if not os.path.isdir(path):
                path.mkdir()  # a read-only or special file system, a name too long: OSError
                made.append(path)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        made_it = os.path.isdir(folder)
        problem = f"cannot write in the folder {folder}" if made_it else f"cannot create the folder {e.filename}"
        raise _error(where, ("output_dir",), f"{problem}: {e.strerror}") from None
    finally:
        for path in [] if keep else reversed(made):
            path.rmdir()
