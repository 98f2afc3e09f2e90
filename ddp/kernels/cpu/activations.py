"""Compiled activation kernels: GELU (exact form, float32), forward and backward."""

from __future__ import annotations

import numpy as np

from ddp.kernels import reference
from ddp.kernels.cpu._exp import exp_nonpositive_float32
from ddp.kernels.cpu._flat import flat_or_none
from ddp.kernels.erf import ALPHA, BETA
from ddp.kernels.jit import compiled
from ddp.kernels.parallel import for_ranges

_A0, _A1, _A2, _A3, _A4, _A5, _A6 = ALPHA
_B0, _B1, _B2, _B3, _B4 = BETA
_INV_SQRT_2PI = np.float32(reference.INV_SQRT_2PI)


@compiled
def _gelu_erf_float32_range(x, out, cdf, start, stop):
    """``cdf = Phi(x)``, ``out = x * cdf`` on ``[start, stop)``; Phi through erf's rational in
    float64 (``ddp.kernels.erf``: absolute error 6.5e-8 before the float32 rounding)."""
    for i in range(start, stop):
        xv = np.float64(x[i])
        v = xv * 0.7071067811865476
        v = 4.0 if v > 4.0 else v  # |erf| rounds to 1 in float32 beyond 4
        v = -4.0 if v < -4.0 else v
        v2 = v * v
        num = (((((_A0 * v2 + _A1) * v2 + _A2) * v2 + _A3) * v2 + _A4) * v2 + _A5) * v2 + _A6
        den = (((_B0 * v2 + _B1) * v2 + _B2) * v2 + _B3) * v2 + _B4
        c = 0.5 * (1.0 + v * num / den)
        cdf[i] = c
        out[i] = xv * c


def gelu_forward(x, approximate: str):
    """``reference.gelu_forward``: ``(y, saved)``; float32 exact GELU in one compiled pass."""
    flat = flat_or_none(x) if x.dtype == np.float32 and approximate == "none" else None
    if flat is None:
        return reference.gelu_forward(x, approximate)
    out = np.empty(flat.shape, dtype=np.float32)
    cdf = np.empty(flat.shape, dtype=np.float32)
    for_ranges(flat.size, lambda start, stop: _gelu_erf_float32_range(flat, out, cdf, start,
                                                                      stop))
    return out.reshape(x.shape), cdf.reshape(x.shape)


@compiled
def _gelu_erf_backward_float32_range(grad, x, cdf, out, start, stop):
    """``out = grad * (Phi(x) + x * phi(x))`` on ``[start, stop)``, in float32 as the reference
    (phi the standard normal density, through the vectorisable exp)."""
    for i in range(start, stop):
        xv = x[i]
        density = exp_nonpositive_float32(np.float32(-0.5) * xv * xv) * _INV_SQRT_2PI
        out[i] = grad[i] * (cdf[i] + xv * density)


def gelu_backward(grad, x, saved, approximate: str):
    """``reference.gelu_backward``; float32 exact GELU in one compiled pass."""
    arrays = [flat_or_none(a) for a in (grad, x, saved)]
    if (approximate != "none" or any(a is None or a.dtype != np.float32 for a in arrays)
            or grad.shape != x.shape):
        return reference.gelu_backward(grad, x, saved, approximate)
    g, flat, cdf = arrays
    out = np.empty(flat.shape, dtype=np.float32)
    for_ranges(flat.size, lambda start, stop: _gelu_erf_backward_float32_range(
        g, flat, cdf, out, start, stop))
    return out.reshape(x.shape)
