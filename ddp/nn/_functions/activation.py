"""GELU (exact and tanh forms) and dropout as dedicated functions; forward beside backward."""

from __future__ import annotations

import math

import numpy as np

from ddp import kernels, random
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.device import device_of, move_array
from ddp.kernels.parallel import for_ranges
from ddp.nn._functions.erf import _erf_float32_range, erf, float32_work_buffers

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715
_BLOCK = 1 << 15  # elements per block: a block's work buffers stay in the core's cache


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
        if x.dtype == np.float32:
            out, cdf = _gelu_float32(x)
            ctx.save_for_backward(x, cdf)
            return out
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
        if x.dtype == np.float32 and grad.dtype == np.float32:
            return _gelu_backward_float32(grad, x, saved), None
        # d/dx x*Phi(x) = Phi(x) + x * phi(x)
        pdf = x * x
        pdf *= -0.5
        xp.exp(pdf, out=pdf)
        pdf *= x
        pdf *= _INV_SQRT_2PI
        pdf += saved
        pdf *= grad
        return pdf, None


def _gelu_float32(x):
    """``(x * Phi(x), Phi(x))`` of a float32 NumPy array: cache-sized blocks, on all threads."""
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    cdf = np.empty(flat.shape, dtype=np.float32)

    def kernel(begin, end):
        buffers = float32_work_buffers(min(_BLOCK, end - begin))
        for start in range(begin, end, _BLOCK):
            stop = min(start + _BLOCK, end)
            c = cdf[start:stop]
            _erf_float32_range(flat, cdf, start, stop, _SQRT_HALF, buffers)
            c += 1.0
            c *= 0.5
            np.multiply(flat[start:stop], c, out=out[start:stop])

    for_ranges(flat.size, kernel)
    return out.reshape(x.shape), cdf.reshape(x.shape)


def _gelu_backward_float32(grad, x, cdf):
    """``grad * (Phi(x) + x * phi(x))`` for float32 NumPy arrays, blocked and threaded."""
    g, flat, c = (np.ascontiguousarray(a).reshape(-1) for a in (grad, x, cdf))
    out = np.empty(flat.shape, dtype=np.float32)

    def kernel(begin, end):
        for start in range(begin, end, _BLOCK):
            stop = min(start + _BLOCK, end)
            v, pdf = flat[start:stop], out[start:stop]
            np.multiply(v, v, out=pdf)
            pdf *= -0.5
            np.exp(pdf, out=pdf)
            pdf *= v
            pdf *= _INV_SQRT_2PI
            pdf += c[start:stop]
            pdf *= g[start:stop]

    for_ranges(flat.size, kernel)
    return out.reshape(grad.shape)


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
