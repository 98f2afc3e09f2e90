"""Custom ``ddp.autograd.Function``s on a GPU: tensors stay on the device, numbers match the CPU."""

from __future__ import annotations

import numpy as np
import pytest

import ddp

pytestmark = pytest.mark.gpu


class ClampedSquare(ddp.autograd.Function):
    """Two outputs (one unused below, so its gradient is materialised as device zeros)."""

    @staticmethod
    def forward(ctx, x, limit):
        ctx.save_for_backward(x)
        ctx.limit = limit
        return (x * x).clamp(max=limit), x * 2

    @staticmethod
    def backward(ctx, g_square, g_double):
        (x,) = ctx.saved_tensors
        assert g_square.device == x.device and g_double.device == x.device
        inside = ((x * x) < ctx.limit).float()
        return g_square * 2 * x * inside + g_double * 2, None


def _run(dev):
    x = ddp.tensor(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4), device=dev,
                   requires_grad=True)
    square, _ = ClampedSquare.apply(x, 2.0)
    assert square.device.type == dev
    (square * ddp.arange(4, device=dev)).sum().backward()
    assert x.grad.device.type == dev
    return square.detach().cpu().numpy(), x.grad.cpu().numpy()


def test_custom_function_on_gpu_equals_cpu():
    for c, g in zip(_run("cpu"), _run("cuda"), strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-6)
