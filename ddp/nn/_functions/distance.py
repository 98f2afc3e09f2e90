"""Vector norms along a dim: ``normalize`` (``x / max(||x||_p, eps)``) and
``cosine_similarity``; forward beside backward.

Both are single nodes rather than compositions so that a zero vector gets torch's gradient
(finite: the norm's derivative ``x / ||x||`` is taken as 0 there) instead of ``0 * inf``.
"""

from __future__ import annotations

import math

from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import unbroadcast


def _norm(xp, x, p: float, dim: int):
    """``||x||_p`` along ``dim``, kept as a size-1 dim."""
    ax = xp.abs(x)
    if p == math.inf:
        return ax.max(axis=dim, keepdims=True)
    if p == 1:
        return ax.sum(axis=dim, keepdims=True)
    if p == 2:
        return xp.sqrt((x * x).sum(axis=dim, keepdims=True))
    return (ax**p).sum(axis=dim, keepdims=True) ** (1.0 / p)


def _norm_derivative(xp, x, norm, p: float, dim: int):
    """``d||x||_p / dx``: ``sign(x) |x|^(p-1) / ||x||^(p-1)``, 0 where ``||x|| == 0``.

    For ``p = inf`` the derivative is shared evenly by the entries of largest magnitude, as in
    torch's ``linalg_vector_norm`` backward.
    """
    zero = norm == 0
    safe = xp.where(zero, 1, norm)
    if p == math.inf:
        at_max = (xp.abs(x) == norm) & ~zero
        count = xp.maximum(at_max.sum(axis=dim, keepdims=True), 1).astype(x.dtype)
        return xp.sign(x) * at_max / count
    if p == 1:
        return xp.where(zero, 0, xp.sign(x))
    if p == 2:
        return xp.where(zero, 0, x / safe)
    return xp.where(zero, 0, xp.sign(x) * (xp.abs(x) / safe) ** (p - 1))


class Normalize(Function):
    """``x / max(||x||_p, eps)`` along ``dim``; no gradient flows through the ``eps`` floor."""

    @staticmethod
    def forward(ctx, x, p, dim, eps):
        xp = get_array_module(x)
        norm = _norm(xp, x, p, dim)
        denom = xp.maximum(norm, eps).astype(x.dtype, copy=False)
        ctx.save_for_backward(x, norm, denom)
        ctx.p, ctx.dim, ctx.eps = p, dim, eps
        return x / denom

    @staticmethod
    def backward(ctx, grad):
        x, norm, denom = ctx.saved_tensors
        xp = get_array_module(grad)
        g = grad / denom
        # d/dx of x / d(x): g / d - [||x|| >= eps] * sum(g * x) / d^2 * d||x||/dx
        through = (norm >= ctx.eps) * (g * x).sum(axis=ctx.dim, keepdims=True) / denom
        return g - through * _norm_derivative(xp, x, norm, ctx.p, ctx.dim), None, None, None


class CosineSimilarity(Function):
    """``sum((a / max(||a||, eps)) * (b / max(||b||, eps)))`` along ``dim`` (broadcasting).

    As in torch, the ``eps`` floor is applied without a gradient of its own: the norm's
    gradient still flows when a vector is shorter than ``eps``.
    """

    @staticmethod
    def forward(ctx, a, b, dim, eps):
        xp = get_array_module(a)
        a_full, b_full = xp.broadcast_arrays(a, b)
        na, nb = _norm(xp, a_full, 2, dim), _norm(xp, b_full, 2, dim)
        da = xp.maximum(na, eps).astype(a.dtype, copy=False)
        db = xp.maximum(nb, eps).astype(b.dtype, copy=False)
        an, bn = a_full / da, b_full / db
        out = (an * bn).sum(axis=dim)
        ctx.save_for_backward(a_full, b_full, na, nb, da, db, an, bn)
        ctx.dim, ctx.shapes = dim, (a.shape, b.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, na, nb, da, db, an, bn = ctx.saved_tensors
        xp = get_array_module(grad)
        g = xp.expand_dims(grad, ctx.dim)
        cos = (an * bn).sum(axis=ctx.dim, keepdims=True)
        sa, sb = ctx.shapes
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = g * (bn - cos * _norm_derivative(xp, a, na, 2, ctx.dim)) / da
            ga = unbroadcast(ga, sa)
        if ctx.needs_input_grad[1]:
            gb = g * (an - cos * _norm_derivative(xp, b, nb, 2, ctx.dim)) / db
            gb = unbroadcast(gb, sb)
        return ga, gb, None, None
