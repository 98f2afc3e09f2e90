"""Layer normalisation as one graph node with its analytic backward."""

from __future__ import annotations

import numpy as np

from ddp import kernels
from ddp.autograd.function import Function
from ddp.ops._util import reshape_fresh


class LayerNorm(Function):
    """Normalise over the trailing ``k`` dims: ``y = (x - mean) * rstd * weight + bias``.

    Backward, with ``xhat = (x - mean) * rstd`` and ``gh = grad * weight``::

        dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
        dweight = sum(grad * xhat),  dbias = sum(grad)   (over the leading dims)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, ndims, eps):
        # Rows of a 2-D view through ddp.kernels: the NumPy reference on a CPU, one fused
        # launch on a GPU (same maths, one implementation).
        norm_shape = x.shape[x.ndim - ndims:]
        rows = x.reshape(-1, int(np.prod(norm_shape, dtype=np.int64)))
        w = None if weight is None else weight.reshape(-1)
        b = None if bias is None else bias.reshape(-1)
        out, xhat, rstd = kernels.layer_norm_forward(rows, w, b, eps)
        ctx.save_for_backward(xhat, rstd, w)
        ctx.norm_shape = norm_shape
        ctx.has_bias = bias is not None
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g2 = grad.reshape(xhat.shape)
        gx = gw = gb = None
        if needs[0]:
            gx = kernels.layer_norm_backward_input(g2, xhat, rstd, w).reshape(grad.shape)
        if w is not None and needs[1]:
            gw = reshape_fresh(kernels.column_sums(g2 * xhat), ctx.norm_shape)
        if ctx.has_bias and needs[2]:
            gb = reshape_fresh(kernels.column_sums(g2), ctx.norm_shape)
        return gx, gw, gb, None, None
