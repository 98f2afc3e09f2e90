"""``torch.compile``, ``torch.use_deterministic_algorithms`` and
``torch.set_float32_matmul_precision``: accepted with torch's checks, recorded, no effect."""

from __future__ import annotations

import pytest
from _helpers import torch_oracle

import ddp
from ddp import compiler, numerics

torch = torch_oracle()


def test_compile_returns_the_model_with_one_warning(monkeypatch):
    monkeypatch.setattr(compiler, "_warned", False)
    model = ddp.nn.Linear(2, 1)
    with pytest.warns(UserWarning, match="ddp runs eagerly and has no compiler; Linear is "
                                         "returned unchanged"):
        assert ddp.compile(model) is model
    assert ddp.compile(model, mode="max-autotune", fullgraph=True) is model  # warned already

    @ddp.compile
    def double(x):
        return x * 2

    @ddp.compile(mode="reduce-overhead")
    def triple(x):
        return x * 3

    assert double(ddp.ones(1)).tolist() == [2.0] and triple(ddp.ones(1)).tolist() == [3.0]
    for lib in (ddp, torch):
        with pytest.raises(RuntimeError, match="Unrecognized mode=bogus, should be one of"):
            lib.compile(model if lib is ddp else torch.nn.Linear(2, 1), mode="bogus")


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_numerics_switches_as_torch(lib, monkeypatch):
    T = ddp if lib == "ddp" else torch
    if lib == "ddp":
        monkeypatch.setattr(numerics, "_state", dict(numerics._state))
    previous = (T.are_deterministic_algorithms_enabled(), T.get_float32_matmul_precision())
    try:
        assert previous == (False, "highest")
        T.use_deterministic_algorithms(True, warn_only=True)
        assert T.are_deterministic_algorithms_enabled()
        assert T.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(TypeError, match="must be bool, not str"):
            T.use_deterministic_algorithms("yes")
        T.set_float32_matmul_precision("high")
        assert T.get_float32_matmul_precision() == "high"
        with pytest.warns(UserWarning, match="low is not one of 'highest', 'high', or 'medium'"):
            T.set_float32_matmul_precision("low")
        assert T.get_float32_matmul_precision() == "high"
    finally:
        T.use_deterministic_algorithms(False)
        T.set_float32_matmul_precision("highest")
