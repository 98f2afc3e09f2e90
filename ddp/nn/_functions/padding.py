"""Padding of trailing dims: constant (negative widths crop), reflect, replicate, circular.

``pads`` is a tuple of ``(axis, before, after)``, already translated from torch's reversed-pair
order by ``nn.functional.pad``. Non-constant modes pad one axis after the other out of slices
of the input (``xp.concatenate``); backward walks the axes in reverse, folding each border's
gradient back onto the input cells it copied. Everything is basic slicing: NumPy and CuPy alike.
"""

from __future__ import annotations

from ddp.autograd.function import Function
from ddp.backend import get_array_module


def _take(ndim: int, axis: int, start, stop, step=None) -> tuple:
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop, step)
    return tuple(index)


def _reversed(ndim: int, axis: int, start: int, stop: int) -> tuple:
    """Cells ``start, start - 1, ..., stop + 1`` along ``axis`` (``stop`` may be -1)."""
    return _take(ndim, axis, start, stop if stop >= 0 else None, -1)


class ConstantPad(Function):
    """Surround with ``value``; a negative width removes cells instead."""

    @staticmethod
    def forward(ctx, x, pads, value):
        xp = get_array_module(x)
        shape = list(x.shape)
        src = [slice(None)] * x.ndim
        dst = [slice(None)] * x.ndim
        for axis, before, after in pads:
            n = x.shape[axis]
            shape[axis] = n + before + after
            src[axis] = slice(max(-before, 0), n - max(-after, 0))
            dst[axis] = slice(max(before, 0), max(before, 0) + max(src[axis].stop
                                                                    - src[axis].start, 0))
        out = xp.full(shape, value, dtype=x.dtype)
        out[tuple(dst)] = x[tuple(src)]
        ctx.index = (tuple(src), tuple(dst))
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        src, dst = ctx.index
        g = get_array_module(grad).zeros(ctx.x_shape, dtype=grad.dtype)
        g[src] = grad[dst]
        return g, None, None


def _pad_axis(xp, x, axis: int, before: int, after: int, mode: str):
    n = x.shape[axis]
    if mode == "reflect":
        left = x[_reversed(x.ndim, axis, before, 0)]
        right = (x[_reversed(x.ndim, axis, n - 2, n - 2 - after)] if after
                 else x[_take(x.ndim, axis, 0, 0)])  # n - 2 may be -1: no empty slice from it
    elif mode == "replicate":
        edge = list(x.shape)
        edge[axis] = before
        left = xp.broadcast_to(x[_take(x.ndim, axis, 0, 1)], edge)
        edge[axis] = after
        right = xp.broadcast_to(x[_take(x.ndim, axis, n - 1, n)], edge)
    else:  # circular
        left = x[_take(x.ndim, axis, n - before, n)]
        right = x[_take(x.ndim, axis, 0, after)]
    return xp.concatenate([left, x, right], axis=axis)


def _unpad_axis(xp, g, axis: int, before: int, after: int, n: int, mode: str):
    nd = g.ndim
    gx = g[_take(nd, axis, before, before + n)].copy()
    g_left = g[_take(nd, axis, 0, before)]
    g_right = g[_take(nd, axis, before + n, None)]
    if mode == "reflect":  # left cell j copied x[before - j], right cell j copied x[n - 2 - j]
        gx[_take(nd, axis, 1, before + 1)] += g_left[_reversed(nd, axis, before - 1, -1)]
        gx[_take(nd, axis, n - 1 - after, n - 1)] += g_right[_reversed(nd, axis, after - 1, -1)]
    elif mode == "replicate":
        gx[_take(nd, axis, 0, 1)] += g_left.sum(axis=axis, keepdims=True)
        gx[_take(nd, axis, n - 1, n)] += g_right.sum(axis=axis, keepdims=True)
    else:  # circular
        gx[_take(nd, axis, n - before, n)] += g_left
        gx[_take(nd, axis, 0, after)] += g_right
    return gx


class BorderPad(Function):
    """``reflect`` (mirror without the edge), ``replicate`` (repeat the edge) or ``circular``
    (wrap around) padding, one axis at a time."""

    @staticmethod
    def forward(ctx, x, pads, mode):
        xp = get_array_module(x)
        sizes = []
        out = x
        for axis, before, after in pads:
            sizes.append(out.shape[axis])
            out = _pad_axis(xp, out, axis, before, after, mode)
        ctx.pads, ctx.sizes, ctx.mode = pads, sizes, mode
        return out

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        g = grad
        for (axis, before, after), n in zip(reversed(ctx.pads), reversed(ctx.sizes),
                                            strict=True):
            g = _unpad_axis(xp, g, axis, before, after, n, ctx.mode)
        return g, None, None
