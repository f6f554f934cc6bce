"""Name -> verifier registry, plus loading user verifiers by import path or file path."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Callable

Verifier = Callable[..., list]

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
    """Resolve ``spec``: a registered name, ``module.path:function`` or ``file.py:function``."""
    if spec in VERIFIERS:
        return VERIFIERS[spec]
    if ":" not in spec:
        raise KeyError(f"unknown verifier {spec!r}; registered: {sorted(VERIFIERS)} "
                       "(or give 'module:function' / 'file.py:function')")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"verifier file {target!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise KeyError(f"{target!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise TypeError(f"verifier {spec!r} is not callable")
    return fn
