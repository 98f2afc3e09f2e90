"""The torch oracle's one import (``_helpers.torch_oracle``): fail under CI, skip elsewhere."""

from __future__ import annotations

import sys

import pytest
from _helpers import TORCH_INSTALL, torch_oracle, torch_required


@pytest.mark.parametrize("env,required", [
    ({}, False), ({"CI": "true"}, True), ({"CI": "1"}, True), ({"CI": "false"}, False),
    ({"CI": "0"}, False), ({"DDP_REQUIRE_TORCH": "1"}, True), ({"DDP_REQUIRE_TORCH": "0"}, False),
])
def test_torch_required_by_ci_or_flag(monkeypatch, env, required):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DDP_REQUIRE_TORCH", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert torch_required() is required


@pytest.mark.parametrize("required", [False, True])
def test_missing_oracle_fails_in_ci_and_skips_elsewhere(monkeypatch, required):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DDP_REQUIRE_TORCH", "1" if required else "0")
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match=f"torch oracle not installed: {TORCH_INSTALL}"):
        torch_oracle()
