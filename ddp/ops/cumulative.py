"""Running sums and products along a dim: ``cumsum``, ``cumprod``."""

from __future__ import annotations

import numpy as np

from ddp import dtypes
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import normalize_dim
from ddp.ops.promotion import cast_tensor


def _reverse_cumsum(xp, a, dim: int):
    """``out[k] = sum(a[k:])`` along ``dim``."""
    return xp.flip(xp.cumsum(xp.flip(a, axis=dim), axis=dim), axis=dim)


class Cumsum(Function):
    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        return get_array_module(a).cumsum(a, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        return _reverse_cumsum(get_array_module(grad), grad, ctx.dim), None


class Cumprod(Function):
    @staticmethod
    def forward(ctx, a, dim):
        out = get_array_module(a).cumprod(a, axis=dim)
        ctx.dim = dim
        ctx.save_for_backward(a, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        xp = get_array_module(grad)
        dim = ctx.dim
        if bool((a != 0).all()):
            # d out_j / d a_k = out_j / a_k for j >= k
            return _reverse_cumsum(xp, grad * out, dim) / a, None
        # With zeros, out_j / a_k is 0/0. Instead: grad_k = P_k * S_k with P_k = prod(a[:k])
        # and S_k = sum_{j>=k} g_j * prod(a[k+1:j+1]), i.e. S_k = g_k + a_{k+1} * S_{k+1}.
        g = xp.moveaxis(grad, dim, 0)
        x = xp.moveaxis(a, dim, 0)
        n = x.shape[0]
        s = xp.empty_like(g)
        s[n - 1] = g[n - 1]
        for k in range(n - 2, -1, -1):
            s[k] = g[k] + x[k + 1] * s[k + 1]
        exclusive = xp.ones_like(x)
        if n > 1:
            exclusive[1:] = xp.cumprod(x[:-1], axis=0)
        return xp.moveaxis(exclusive * s, 0, dim), None


def _accumulate_operand(input, dtype):  # noqa: A002
    """torch's result dtype: ``dtype`` if given, else int64 for bool/integer inputs."""
    if dtype is not None:
        target = dtypes.to_numpy_dtype(dtype)
    elif input.array.dtype.kind in "biu":
        target = np.dtype(np.int64)
    else:
        return input
    return input if input.array.dtype == target else cast_tensor(input, target)


@autocast_op("cumsum")
def cumsum(input, dim: int, *, dtype=None):  # noqa: A002
    """``out[..., k, ...] = sum(input[..., :k+1, ...])`` along ``dim``."""
    a = _accumulate_operand(input, dtype)
    if a.ndim == 0:
        return Cumsum.apply(a.reshape(1), 0).reshape(())
    return Cumsum.apply(a, normalize_dim(dim, a.ndim))


@autocast_op("cumprod")
def cumprod(input, dim: int, *, dtype=None):  # noqa: A002
    """``out[..., k, ...] = prod(input[..., :k+1, ...])`` along ``dim``."""
    a = _accumulate_operand(input, dtype)
    if a.ndim == 0:
        return Cumprod.apply(a.reshape(1), 0).reshape(())
    return Cumprod.apply(a, normalize_dim(dim, a.ndim))
