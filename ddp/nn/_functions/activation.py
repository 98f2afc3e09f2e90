"""GELU (exact and tanh forms) and dropout as dedicated functions; forward beside backward."""

from __future__ import annotations

import math

import numpy as np

from ddp import kernels, random
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.device import device_of, move_array
from ddp.nn._functions.erf import erf

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


class GELU(Function):
    """``x * Phi(x)``; Phi the standard normal CDF, or its tanh approximation."""

    @staticmethod
    def forward(ctx, x, approximate):
        xp = get_array_module(x)
        ctx.approximate = approximate
        if xp is not np:  # GPU: one fused launch each way
            out, saved = kernels.gelu_forward(x, approximate)
            ctx.save_for_backward(x, saved)
            return out
        if approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)
            t = xp.tanh(inner)
            ctx.save_for_backward(x, t)
            return 0.5 * x * (1.0 + t)
        cdf = erf(x * _SQRT_HALF)
        cdf += 1.0
        cdf *= 0.5
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx, grad):
        x, saved = ctx.saved_tensors
        xp = get_array_module(x)
        if xp is not np:
            return kernels.gelu_backward(grad, x, saved, ctx.approximate), None
        if ctx.approximate == "tanh":
            t = saved
            dinner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
            d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner
            return grad * d, None
        # d/dx x*Phi(x) = Phi(x) + x * phi(x)
        pdf = x * x
        pdf *= -0.5
        xp.exp(pdf, out=pdf)
        pdf *= x
        pdf *= _INV_SQRT_2PI
        pdf += saved
        pdf *= grad
        return pdf, None


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
