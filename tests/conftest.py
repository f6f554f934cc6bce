"""Tests marked ``gpu`` need CUDA devices (``@pytest.mark.gpu(n)``: at least n, default 1); they are
skipped where there are fewer, such as this project's CPU machines and CI."""

import socket

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        marker = item.get_closest_marker("gpu")
        needed = (marker.args[0] if marker.args else 1) if marker else 0
        if needed > available:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA device(s), {available} available"))


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a test's own process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
