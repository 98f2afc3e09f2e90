"""GPU tests skip, with the reason, when CuPy or a GPU is missing."""

from __future__ import annotations

import pytest

from ddp import backend


def pytest_collection_modifyitems(config, items):
    if backend.cupy_module() is not None:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {backend.cupy_unavailable_reason()}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
