"""Shared pytest setup: ``tests/`` is on ``sys.path`` so test modules can ``import _helpers``."""

from __future__ import annotations

import importlib.metadata
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
    GPU check runs the distributed suites this way, so their invariants are checked on a GPU.

    Under CI (or ``DDP_REQUIRE_TORCH=1``) a missing torch oracle stops the session before any
    test runs: without it every comparison with torch would be a skip, and the run green.
    """
    from _helpers import torch_oracle_problem, torch_required

    if torch_required():
        problem = torch_oracle_problem()
        if problem is not None:
            raise pytest.UsageError(
                f"{problem}. CI (or DDP_REQUIRE_TORCH=1) runs every comparison with torch; "
                "unset CI and DDP_REQUIRE_TORCH to let those tests skip instead.")
    device = os.environ.get("DDP_TEST_DEFAULT_DEVICE")
    if device:
        import ddp

        ddp.set_default_device(device)


def pytest_report_header(config):
    """The oracle in use, or why its tests will skip, on the first lines of every run."""
    from _helpers import TORCH_INSTALL, torch_required

    try:
        found = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        found = f"not installed ({TORCH_INSTALL}); torch comparisons skip"
    required = " (required: CI or DDP_REQUIRE_TORCH=1)" if torch_required() else ""
    return f"torch oracle: {found}{required}"


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


@pytest.fixture(params=["reference", "compiled"])
def kernel_path(request, monkeypatch):
    """Run the test once on the NumPy reference kernels and once on the numba-compiled ones
    (``ddp.kernels.cpu``, for arrays of every size). numba is a declared dependency: its
    absence fails the compiled half rather than skipping it."""
    from ddp.kernels import jit

    if request.param == "reference":
        monkeypatch.setattr(jit, "ENABLED", False)
    else:
        monkeypatch.setattr(jit, "ENABLED", True)
        monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
        assert jit.available(), "numba is not installed: pip install -e '.[test]'"
    return request.param
