"""Shared pytest setup: ``tests/`` is on ``sys.path`` so test modules can ``import _helpers``."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """A test that leaves grad mode off must not turn it off for the tests after it."""
    import ddp

    yield
    leaked = not ddp.is_grad_enabled()
    ddp.set_grad_enabled(True)
    assert not leaked, "test left grad mode disabled"
