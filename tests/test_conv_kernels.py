"""im2col / col2im kernels (``ddp.kernels``) and the exact-column convolution built on them.

Each test runs on the NumPy reference and on the compiled kernels (``kernel_path``), against
float64 truth computed by a direct loop, and against torch in float64 for conv2d's gradients.
float32 tolerances: a sum of K = C*kh*kw products of O(1) values carries a relative error of a
few ulps times sqrt(K) (K <= 72 here), so 2e-5 of the output's scale holds with margin.
"""

import numpy as np
import pytest

import ddp
from ddp import kernels
from tests._helpers import torch_oracle

# (batch, channels, height, width, kernel, stride, padding, dilation)
CASES = [
    (2, 3, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1)),   # padded, stride 1, odd sizes
    (3, 2, 8, 8, (3, 3), (2, 2), (1, 1), (1, 1)),   # stride 2 (ResNet down-sampling)
    (2, 4, 9, 7, (1, 1), (2, 2), (0, 0), (1, 1)),   # 1x1 stride-2 shortcut
    (2, 3, 11, 10, (3, 3), (1, 1), (2, 2), (2, 2)),  # dilation
    (1, 2, 5, 6, (2, 3), (3, 1), (0, 2), (1, 2)),   # mixed, padding wider than the kernel reach
    (4, 1, 6, 6, (3, 3), (1, 1), (0, 0), (1, 1)),   # no padding (the MNIST CNN)
]


def _columns_truth(x, kernel, stride, padding, dilation):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = kernels.conv_output_size((h, w), kernel, stride, padding, dilation)
    cols = np.zeros((c * kh * kw, n * ho * wo))
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                for b in range(n):
                    for oh in range(ho):
                        for ow in range(wo):
                            y, xx = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                            if 0 <= y < h and 0 <= xx < w:
                                cols[(ci * kh + i) * kw + j, (b * ho + oh) * wo + ow] = \
                                    x[b, ci, y, xx]
    return cols


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_and_its_adjoint_col2im(case, dtype, kernel_path):
    n, c, h, w, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    truth = _columns_truth(x, kernel, stride, padding, dilation)
    cols = np.full(truth.shape, np.nan, dtype=dtype)  # every element must be written
    kernels.im2col(x.astype(dtype), kernel, stride, padding, dilation, cols)
    np.testing.assert_array_equal(cols, truth.astype(dtype))  # a copy: exact
    # col2im is the adjoint: <im2col(x), g> == <x, col2im(g)> for every x, so col2im(g) is
    # the gradient of that inner product, sum over g's entries landing on each x position.
    g = rng.standard_normal(truth.shape)
    out = np.full(x.shape, np.nan, dtype=dtype)
    kernels.col2im(g.astype(dtype), kernel, stride, padding, dilation, out)
    expected = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        unit = np.zeros(x.shape)
        unit[idx] = 1.0
        expected[idx] = np.sum(_columns_truth(unit, kernel, stride, padding, dilation) * g)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * np.abs(g).max() * 9)


@pytest.mark.parametrize("case", CASES + [(5, 8, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1))])
@pytest.mark.parametrize("threads", ["1", "3"])
def test_conv2d_matches_torch_float64(case, threads, kernel_path, monkeypatch):
    """Forward and all three gradients, chunked over 1 and 3 threads (odd: uneven ranges)."""
    torch = torch_oracle()
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    n, c, h, w, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((5, c) + kernel)
    bias = rng.standard_normal(5)
    results = []
    for lib, dtype in ((torch, torch.float64), (ddp, ddp.float32)):
        tx = lib.tensor(x, dtype=dtype, requires_grad=True)
        tw = lib.tensor(weight, dtype=dtype, requires_grad=True)
        tb = lib.tensor(bias, dtype=dtype, requires_grad=True)
        y = lib.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding,
                                     dilation=dilation)
        g = np.random.default_rng(2).standard_normal(tuple(y.shape))
        y.backward(lib.tensor(g, dtype=dtype))
        results.append([np.asarray(t.detach().numpy(), dtype=np.float64)
                        for t in (y, tx.grad, tw.grad, tb.grad)])
    for name, want, got in zip(("out", "grad x", "grad w", "grad b"), *results, strict=True):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale, err_msg=name)


def test_conv2d_non_contiguous_input_and_grad(kernel_path):
    """A transposed (non-contiguous) input and output gradient give the contiguous result."""
    torch = torch_oracle()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 8, 5)).transpose(0, 1, 3, 2)  # (6, 3, 5, 8), strided
    weight = rng.standard_normal((4, 3, 3, 3))
    tx = ddp.tensor(x.astype(np.float32), requires_grad=True)
    tw = ddp.tensor(weight.astype(np.float32), requires_grad=True)
    rx = torch.tensor(x, requires_grad=True)
    rw = torch.tensor(weight, requires_grad=True)
    y = ddp.nn.functional.conv2d(tx, tw, padding=1)
    ry = torch.nn.functional.conv2d(rx, rw, padding=1)
    g = rng.standard_normal(tuple(ry.shape)[::-1]).T  # a strided gradient
    y.backward(ddp.tensor(g.astype(np.float32)))
    ry.backward(torch.tensor(g))
    for got, want in ((y, ry), (tx.grad, rx.grad), (tw.grad, rw.grad)):
        want = want.detach().numpy()
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=0,
                                   atol=2e-5 * np.abs(want).max())
