"""ReLU through ``ddp.kernels`` on both kernel paths: values, NaN, gradients, inplace."""

import numpy as np
import pytest

import ddp
from tests._helpers import torch_oracle


@pytest.mark.parametrize("dtype", [ddp.float32, ddp.float64])
@pytest.mark.parametrize("threads", ["1", "3"])
def test_relu_forward_backward_exact(dtype, threads, kernel_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 7, 11))
    x.flat[:4] = [np.nan, np.inf, -np.inf, 0.0]
    g = rng.standard_normal(x.shape)
    t = ddp.tensor(x, dtype=dtype, requires_grad=True)
    y = ddp.relu(t)
    y.backward(ddp.tensor(g, dtype=dtype))
    np_dtype = np.float32 if dtype == ddp.float32 else np.float64
    want = np.maximum(x, 0).astype(np_dtype)  # exact: a selection, no rounding
    np.testing.assert_array_equal(y.detach().numpy(), want)  # NaN compares equal here
    np.testing.assert_array_equal(t.grad.numpy(), (g * (want > 0)).astype(np_dtype))


def test_relu_strided_input_and_gradient(kernel_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 30)).astype(np.float32)
    t = ddp.tensor(x, requires_grad=True)
    y = ddp.relu(t.t())  # a transposed view
    g = rng.standard_normal((40, 30)).astype(np.float32).T
    y.backward(ddp.tensor(g))
    np.testing.assert_array_equal(y.detach().numpy(), np.maximum(x.T, 0))
    np.testing.assert_array_equal(t.grad.numpy(), (g * (x.T > 0)).T)


def test_inplace_relu_in_a_graph_matches_torch(kernel_path):
    """``nn.ReLU(inplace=True)`` after a layer (the ResNet's use): values and gradients."""
    torch = torch_oracle()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 300))
    results = []
    for lib in (torch, ddp):
        tx = lib.tensor(x, requires_grad=True)
        h = tx * 2.0
        out = lib.nn.ReLU(inplace=True)(h)
        assert out is h
        (out * out).sum().backward()
        results.append((out.detach().numpy(), tx.grad.numpy()))
    for want, got in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
