"""Group normalisation as one graph node: layer norm of each (sample, group) row, then a
per-channel scale and shift."""

from __future__ import annotations

from ddp import kernels
from ddp.autograd.function import Function


class GroupNorm(Function):
    """``y[n, c] = xhat[n, c] * weight[c] + bias[c]``; ``xhat`` normalises each sample's group
    of ``C / G`` channels (and all their positions) to mean 0, biased variance 1.

    The rows ``(N * G, C / G * L)`` go through the layer-norm kernels (``ddp.kernels``: the
    NumPy reference on a CPU, one fused launch on a GPU). Backward, with ``gh = g * weight[c]``
    and ``rstd`` per row::

        dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))     (means over each row)
        dweight[c] = sum(g * xhat),  dbias[c] = sum(g)           (over samples and positions)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        n, c = x.shape[:2]
        rows = x.reshape(n * groups, -1)
        _, xhat, rstd = kernels.layer_norm_forward(rows, None, None, eps)
        x3 = xhat.reshape(n, c, -1)
        out = x3 * weight[:, None] if weight is not None else x3.copy()
        if bias is not None:
            out += bias[:, None]
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.has_bias = bias is not None
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        n, c = grad.shape[:2]
        g3 = grad.reshape(n, c, -1)
        gx = gw = gb = None
        if needs[0]:
            gh = g3 * weight[:, None] if weight is not None else g3
            gx = kernels.layer_norm_backward_input(gh.reshape(xhat.shape), xhat, rstd, None)
            gx = gx.reshape(grad.shape)
        if weight is not None and needs[1]:
            gw = (g3 * xhat.reshape(g3.shape)).sum(axis=2).sum(axis=0)
        if ctx.has_bias and needs[2]:
            gb = g3.sum(axis=2).sum(axis=0)
        return gx, gw, gb, None, None
