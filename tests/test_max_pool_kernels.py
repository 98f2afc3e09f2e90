"""max_pool2d(x, 2) on both kernel paths: values, torch's tie rule, odd sizes, threads."""

import numpy as np
import pytest

import ddp
from tests._helpers import torch_oracle


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (3, 2, 7, 9), (1, 1, 5, 4)])
@pytest.mark.parametrize("threads", ["1", "3"])
def test_max_pool_2x2_matches_torch_exactly(shape, threads, kernel_path, monkeypatch):
    """Values and gradients are selections: equal to torch's bit for bit, ties included
    (integer-valued inputs tie often; the first maximum in row-major order takes the grad)."""
    torch = torch_oracle()
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=shape).astype(np.float32)
    n, c, h, w = shape
    g = rng.standard_normal((n, c, h // 2, w // 2)).astype(np.float32)
    results = []
    for lib in (torch, ddp):
        t = lib.tensor(x, requires_grad=True)
        y = lib.nn.functional.max_pool2d(t, 2)
        y.backward(lib.tensor(g))
        results.append((y.detach().numpy(), t.grad.numpy()))
    for want, got in zip(*results, strict=True):
        np.testing.assert_array_equal(got, want)


def test_max_pool_2x2_nan_wins(kernel_path):
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 2, 3] = 5.0
    t = ddp.tensor(x, requires_grad=True)
    y = ddp.nn.functional.max_pool2d(t, 2)
    y.sum().backward()
    out = y.detach().numpy()[0, 0]
    assert np.isnan(out[0, 0]) and out[1, 1] == 5.0 and out[0, 1] == 0.0
    grad = t.grad.numpy()[0, 0]
    assert grad[1, 1] == 1.0 and grad[2, 3] == 1.0 and grad[0, 2] == 1.0  # 0-ties: the first
    assert grad.sum() == 4.0


def test_max_pool_2x2_float64_and_strided_input(kernel_path):
    torch = torch_oracle()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 6))
    results = []
    for lib in (torch, ddp):
        t = lib.tensor(x, requires_grad=True)
        y = lib.nn.functional.max_pool2d(t.transpose(2, 3), 2)  # a strided view
        (y * y).sum().backward()
        results.append((y.detach().numpy(), t.grad.numpy()))
    for want, got in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
