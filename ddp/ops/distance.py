"""``cdist``: p-norm distances between two sets of row vectors, with batch broadcasting.

Distances are computed from the differences directly, never through ``|x|^2 + |y|^2 - 2 x.y``
(torch's ``compute_mode`` matmul shortcut for large inputs), which loses the small distances to
cancellation: ddp's result is the more accurate one and costs ``P * R * M`` memory.
"""

from __future__ import annotations

import math

import numpy as np

from ddp import dtypes
from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import unbroadcast


class Cdist(Function):
    @staticmethod
    def forward(ctx, x1, x2, p):
        xp = get_array_module(x1)
        diff = x1[..., :, None, :] - x2[..., None, :, :]
        mag = xp.abs(diff)
        if p == 2:
            dist = xp.sqrt((diff * diff).sum(axis=-1))
        elif p == 1:
            dist = mag.sum(axis=-1)
        elif p == 0:
            dist = (diff != 0).sum(axis=-1).astype(x1.dtype)
        elif math.isinf(p):
            dist = mag.max(axis=-1) if diff.shape[-1] else xp.zeros(diff.shape[:-1], x1.dtype)
        else:
            dist = (mag ** p).sum(axis=-1) ** (1.0 / p)
        ctx.p = p
        ctx.shapes = (x1.shape, x2.shape)
        ctx.save_for_backward(diff, dist)
        return dist

    @staticmethod
    def backward(ctx, grad):
        diff, dist = ctx.saved_tensors
        xp = get_array_module(grad)
        p = ctx.p
        g = grad[..., None]
        d = dist[..., None]
        if p == 0:
            gd = xp.zeros_like(diff)
        elif p == 1:
            gd = g * xp.sign(diff)
        elif p == 2:
            # at zero distance the subgradient 0 is taken, as torch does
            gd = g * diff / xp.where(d == 0, 1, d) * (d != 0)
        elif math.isinf(p):
            gd = g * xp.sign(diff) * (xp.abs(diff) == d)
        else:
            mag = xp.abs(diff)
            # |diff| / dist in (0, 1]; where diff is 0 the term is 0 (p < 1 would give 0 * inf)
            ratio = xp.where(mag == 0, 1, mag) / xp.where(d == 0, 1, d)
            gd = xp.where(mag == 0, 0, g * xp.sign(diff) * ratio ** (p - 1))
        g1 = unbroadcast(gd.sum(axis=-2), ctx.shapes[0]) if ctx.needs_input_grad[0] else None
        g2 = unbroadcast(-gd.sum(axis=-3), ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return g1, g2, None


@autocast_op("cdist")
def cdist(x1, x2, p: float = 2.0, compute_mode=None):
    """Distances ``out[..., i, j] = ||x1[..., i, :] - x2[..., j, :]||_p``; batch dims broadcast.

    ``compute_mode`` is accepted for torch's signature; ddp always uses the differences.
    """
    tensor_class = tensor_type.Tensor
    if not isinstance(x1, tensor_class) or not isinstance(x2, tensor_class):
        raise TypeError("cdist() expects two tensors")
    if x1.ndim < 2 or x2.ndim < 2:
        raise RuntimeError(f"cdist only supports at least 2D tensors, X1 got: {x1.ndim}D, X2 got: "
                           f"{x2.ndim}D")
    if x1.shape[-1] != x2.shape[-1]:
        raise RuntimeError(f"X1 and X2 must have the same number of columns. X1: {x1.shape[-1]} "
                           f"X2: {x2.shape[-1]}")
    if p < 0:
        raise RuntimeError(f"cdist only supports non-negative p values, got {p}")
    if not dtypes.is_floating(x1.array.dtype) or x2.array.dtype != x1.array.dtype:
        raise RuntimeError(f"cdist only supports floating-point dtypes of one kind, X1 got: "
                           f"{x1.dtype}, X2 got: {x2.dtype}")
    return Cdist.apply(x1, x2, float(p))


_ = np  # NumPy is the reference backend
