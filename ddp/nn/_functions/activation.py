"""GELU (exact and tanh forms) and dropout as dedicated functions; forward beside backward."""

from __future__ import annotations

from ddp import kernels, random
from ddp.autograd.function import Function
from ddp.device import device_of, move_array


class GELU(Function):
    """``x * Phi(x)``; Phi the standard normal CDF, or its tanh approximation.

    Both devices go through ``ddp.kernels``: the reference (blocked and threaded for float32)
    on a CPU, one fused launch each way on a GPU; the formulas live there.
    """

    @staticmethod
    def forward(ctx, x, approximate):
        out, saved = kernels.gelu_forward(x, approximate)
        ctx.approximate = approximate
        ctx.save_for_backward(x, saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, saved = ctx.saved_tensors
        return kernels.gelu_backward(grad, x, saved, ctx.approximate), None


class Dropout(Function):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``."""

    @staticmethod
    def forward(ctx, x, p, generator):
        keep = random.uniform_array(x.shape, 0.0, 1.0, x.dtype, generator) >= p
        scale = keep.astype(x.dtype)
        scale *= 1.0 / (1.0 - p)
        if device_of(x).type != "cpu":
            scale = move_array(scale, device_of(x))
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None
