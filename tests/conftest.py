"""Tests marked ``gpu`` need CUDA devices (``@pytest.mark.gpu(n)``: at least n, default 1); they are
skipped where there are fewer, such as this project's CPU machines and CI. Tests marked ``vllm`` need vLLM,
which lives in its own virtualenv (README, "Engines"); they are skipped where it is not installed."""

import importlib.util
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    has_vllm = importlib.util.find_spec("vllm") is not None
    for item in items:
        marker = item.get_closest_marker("gpu")
        needed = (marker.args[0] if marker.args else 1) if marker else 0
        if needed > available:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA device(s), {available} available"))
        if item.get_closest_marker("vllm") and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="needs vLLM (its own virtualenv: README, 'Engines')"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """An RLKIT_CACHE for the runs that need the built-in models (and a warm start) but do not test how
    they are built: each is built once per session instead of once per test, in a process of its own."""
    return tmp_path_factory.mktemp("rlkit-cache")
