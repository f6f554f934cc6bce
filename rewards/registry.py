"""Name -> verifier registry, plus loading user verifiers by import path or file path."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path

Verifier = Callable[..., list | Awaitable[list]]  # plain or async

VERIFIERS: dict[str, Verifier] = {}


def register(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator: make ``fn`` available to recipes as ``verifier: name``."""

    def decorate(fn: Verifier) -> Verifier:
        if name in VERIFIERS:
            raise ValueError(f"verifier {name!r} is already registered")
        VERIFIERS[name] = fn
        return fn

    return decorate


def get_verifier(spec: str) -> Verifier:
    """Resolve ``spec``: a registered name, ``module.path:function`` or ``file.py:function``.

    Raises KeyError (unknown name or attribute), FileNotFoundError, ImportError (the module could not be
    imported, whatever it raised) or TypeError (not callable), each with a one-line message.
    """
    if spec in VERIFIERS:
        return VERIFIERS[spec]
    if ":" not in spec:
        close = difflib.get_close_matches(spec, list(VERIFIERS), n=1)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else f"registered: {sorted(VERIFIERS)} (or give 'module:function' / 'file.py:function')"
        )
        raise KeyError(f"unknown verifier {spec!r}; {hint}")
    target, attr = spec.rsplit(":", 1)
    module = _import(target)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise KeyError(f"{target!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise TypeError(f"verifier {spec!r} is not callable")
    return fn


def _import(target: str):
    """The module ``target``, a dotted name or a ``.py`` file. Running a user's module can raise anything:
    every failure becomes one ImportError saying which module and why."""
    path = Path(target)
    if target.endswith(".py") and not path.is_file():
        raise FileNotFoundError(
            f"verifier file {target!r} does not exist (relative paths are from the working directory)"
        )
    try:
        return _exec_file(path) if target.endswith(".py") else importlib.import_module(target)
    except Exception as e:
        raise ImportError(f"cannot import {target!r}: {type(e).__name__}: {e}") from e


def _exec_file(path: Path):
    """Import a ``.py`` file as a module named after it (not added to ``sys.modules``)."""
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:  # None only for a suffix importlib does not know
        raise ImportError(f"{path}: Python cannot load this file as a module")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
