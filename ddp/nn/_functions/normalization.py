"""Layer normalisation as one graph node with its analytic backward."""

from __future__ import annotations

import numpy as np

from ddp import kernels
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import reshape_fresh


class LayerNorm(Function):
    """Normalise over the trailing ``k`` dims: ``y = (x - mean) * rstd * weight + bias``.

    Backward, with ``xhat = (x - mean) * rstd`` and ``gh = grad * weight``::

        dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
        dweight = sum(grad * xhat),  dbias = sum(grad)   (over the leading dims)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, ndims, eps):
        xp = get_array_module(x)
        axes = tuple(range(x.ndim - ndims, x.ndim))
        ctx.axes = axes
        ctx.has_bias = bias is not None
        if xp is not np:  # GPU: one fused launch over (rows, normalised size)
            rows = x.reshape(-1, int(np.prod(x.shape[x.ndim - ndims:], dtype=np.int64)))
            out, xhat, rstd = kernels.layer_norm_forward(rows, weight, bias, eps)
            ctx.save_for_backward(xhat.reshape(x.shape), rstd, weight)
            ctx.fused_rows = rows.shape
            ctx.norm_shape = x.shape[x.ndim - ndims:]
            return out.reshape(x.shape)
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean
        var = (xhat * xhat).mean(axis=axes, keepdims=True)
        var += eps
        rstd = 1.0 / xp.sqrt(var)
        xhat *= rstd
        out = xhat * weight if weight is not None else xhat.copy()
        if bias is not None:
            out += bias
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.axes = axes
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_tensors
        axes = ctx.axes
        needs = ctx.needs_input_grad
        lead = tuple(range(grad.ndim - len(axes)))
        gx = gw = gb = None
        rows = getattr(ctx, "fused_rows", None)
        if rows is not None:  # GPU: rows of a 2-D view, column sums as GEMVs
            g2, xhat2 = grad.reshape(rows), xhat.reshape(rows)
            if needs[0]:
                gx = kernels.layer_norm_backward_input(g2, xhat2, rstd, weight).reshape(
                    grad.shape)
            if weight is not None and needs[1]:
                gw = reshape_fresh(kernels.column_sums(g2 * xhat2), ctx.norm_shape)
            if ctx.has_bias and needs[2]:
                gb = reshape_fresh(kernels.column_sums(g2), ctx.norm_shape)
            return gx, gw, gb, None, None
        if weight is not None and needs[1]:
            gw = (grad * xhat).sum(axis=lead)
        if ctx.has_bias and needs[2]:
            gb = grad.sum(axis=lead)
        if needs[0]:
            gh = grad * weight if weight is not None else grad.copy()
            mean_gh = gh.mean(axis=axes, keepdims=True)
            mean_ghx = (gh * xhat).mean(axis=axes, keepdims=True)
            gh -= mean_gh
            gh -= xhat * mean_ghx
            gh *= rstd
            gx = gh
        return gx, gw, gb, None, None
