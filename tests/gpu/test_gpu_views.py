"""On a GPU ``view``/``reshape``/``view(dtype)`` share device memory and raise as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

import ddp

pytestmark = pytest.mark.gpu


def test_view_shares_device_memory_both_ways():
    x = ddp.arange(24.0, device="cuda").reshape(2, 12)
    y = x.view(-1)
    y[0] = 100.0
    assert x[0, 0].item() == 100.0
    heads = x[:, 4:8].view(2, 2, 2)  # a column block: viewable though not contiguous
    heads[1, 1, 1] = -1.0
    assert x[1, 7].item() == -1.0
    assert x.is_cuda and heads.is_cuda


def test_non_viewable_raises_and_reshape_copies_on_device():
    x = ddp.arange(6.0, device="cuda").reshape(2, 3)
    with pytest.raises(RuntimeError, match=r"Use \.reshape\(\.\.\.\) instead"):
        x.t().view(-1)
    flat = x.t().reshape(-1)
    flat[0] = 9.0
    assert x[0, 0].item() == 0.0
    np.testing.assert_array_equal(flat.cpu().numpy(), [9, 3, 1, 4, 2, 5])


def test_view_dtype_on_device_gives_the_cpu_bits():
    cpu = ddp.arange(6.0).reshape(2, 3)
    gpu = cpu.to("cuda")
    for dtype in (ddp.int32, ddp.uint8, ddp.float16):
        np.testing.assert_array_equal(gpu.view(dtype).cpu().numpy(), cpu.view(dtype).numpy())
    gpu.view(ddp.int32)[0, 1] = 0
    assert gpu[0, 1].item() == 0.0


def test_gradient_through_a_device_view():
    w = ddp.arange(6.0, device="cuda").reshape(2, 3).requires_grad_()
    (w.view(3, 2) * 2).sum().backward()
    np.testing.assert_array_equal(w.grad.cpu().numpy(), np.full((2, 3), 2.0))


def test_view_dtype_offset_and_non_contiguous_errors_on_device():
    x = ddp.zeros(10, device="cuda")
    assert x[2:].view(ddp.float64).shape == (4,)
    with pytest.raises(RuntimeError, match=r"storage_offset\(\) must be divisible by 2"):
        x[1:9].view(ddp.float64)
    # CuPy changes the element size of C-contiguous arrays only: say so instead of its ValueError
    with pytest.raises(RuntimeError, match=r"not supported by CuPy; call \.contiguous\(\) first"):
        x.view(2, 5)[:, :4].view(ddp.float16)
    assert x.view(2, 5)[:, :4].contiguous().view(ddp.float16).shape == (2, 8)
