"""Shared pytest setup: ``tests/`` is on ``sys.path`` so test modules can ``import _helpers``."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

if os.environ.get("DDP_FAKE_CUPY") == "1":  # tests/_fake_cupy.py stands in for CuPy
    import _fake_cupy

    _fake_cupy.install()
    os.environ.setdefault("DDP_FUSED_KERNELS", "0")


def pytest_configure(config):
    """``DDP_TEST_DEFAULT_DEVICE=cuda`` runs tests with ``ddp.set_default_device("cuda")``: the
    GPU check runs the distributed suites this way, so their invariants are checked on a GPU."""
    device = os.environ.get("DDP_TEST_DEFAULT_DEVICE")
    if device:
        import ddp

        ddp.set_default_device(device)


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """A test that leaves grad mode off must not turn it off for the tests after it."""
    import ddp

    yield
    leaked = not ddp.is_grad_enabled()
    ddp.set_grad_enabled(True)
    assert not leaked, "test left grad mode disabled"


@pytest.fixture(scope="session")
def torch():
    """The torch oracle (``_helpers.torch_oracle``): fails under CI when missing, else skips."""
    from _helpers import torch_oracle

    return torch_oracle()
