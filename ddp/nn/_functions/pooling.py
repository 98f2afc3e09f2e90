"""2-D max pooling on NCHW arrays.

Two paths, same contract (the gradient of each window goes to its *first* maximal element in
row-major order, torch's tie rule):

* Tiling windows (kernel == stride, no padding, no dilation: ``max_pool2d(x, 2)``), the common
  case: the maximum is taken in two separable steps, first over the ``kh`` rows of each window
  (strided views whose inner runs are whole input rows), then over the ``kw`` neighbours within a
  row (deinterleaved into contiguous arrays). Each step records which row / column won as a
  compact uint8 index, so backward is a few contiguous multiplies and two interleaving copies,
  with no compares against the input.
* Any other windows: kh*kw vectorised passes over strided views of the padded input; backward
  finds, per window, the first offset equal to the max.
"""

from __future__ import annotations

from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.nn._functions.conv import _crop, _pad, _scratch, _windows


def _first_index(views, best, xp):
    """uint8 index of the first of ``views`` equal to ``best`` (elementwise, first wins)."""
    if len(views) == 1:
        return xp.zeros(best.shape, dtype=xp.uint8)
    idx = (views[0] != best).astype(xp.uint8)
    if len(views) > 2:
        not_found = idx.astype(bool)
        for v in views[1:-1]:
            not_found &= v != best
            idx += not_found
    return idx


def _max_of(views, xp, best=None):
    """Elementwise maximum of ``views`` (into ``best`` when given)."""
    if best is None:
        best = views[0].copy()
    else:
        best[...] = views[0]
    for v in views[1:]:
        xp.maximum(best, v, out=best)
    return best


def _tiled_forward(x, kernel, xp):
    """Max over non-overlapping ``kernel`` tiles; returns ``(out, col_index, row_index)``.

    Columns first, then rows: the first row holding the window's maximum, and in it the first
    column, is the first maximum in row-major order (torch's tie rule).
    """
    n, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = h // kh, w // kw
    x = xp.ascontiguousarray(x[:, :, :ho * kh, :wo * kw])  # a no-op unless it crops
    # Step 1: max over the kw neighbours within each row, deinterleaved into contiguous arrays.
    flat = x.reshape(-1)
    col_views = [flat]
    if kw > 1:
        cols = _scratch("pool_cols", (kw, flat.size // kw), x.dtype, xp)
        for j in range(kw):
            cols[j] = flat[j::kw]
        col_views = list(cols)
    col_max = _max_of(col_views, xp, _scratch("pool_max", col_views[0].shape, x.dtype, xp))
    col_index = _first_index(col_views, col_max, xp)
    # Step 2: max over the kh rows of each window: (N*C*Ho, kh, Wo) -> (N*C*Ho, Wo).
    rows = col_max.reshape(n * c * ho, kh, wo)
    row_views = [rows[:, i] for i in range(kh)]
    best = _max_of(row_views, xp)
    row_index = _first_index(row_views, best, xp)
    return best.reshape(n, c, ho, wo), col_index, row_index


def _tiled_backward(grad, x_shape, kernel, col_index, row_index, xp):
    n, c, h, w = x_shape
    kh, kw = kernel
    ho, wo = grad.shape[2:]
    tile_h, tile_w = ho * kh, wo * kw
    g = grad.reshape(n * c * ho, wo)
    row_grad = _scratch("pool_max", (n * c * ho, kh, wo), grad.dtype, xp)
    for i in range(kh):
        xp.multiply(g, row_index == i, out=row_grad[:, i])
    tiles = xp.empty((n, c, tile_h, tile_w), dtype=grad.dtype)
    flat, row_grad = tiles.reshape(-1), row_grad.reshape(-1)
    for j in range(kw):
        xp.multiply(row_grad, col_index == j, out=flat[j::kw])
    if (h, w) == (tile_h, tile_w):
        return tiles
    out = xp.zeros(x_shape, dtype=grad.dtype)  # cropped rows / columns receive no gradient
    out[:, :, :tile_h, :tile_w] = tiles
    return out


class MaxPool2d(Function):
    """Maximum over each window; the gradient goes to the first maximal element, as in torch."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation):
        xp = get_array_module(x)
        ctx.meta = (kernel, stride, padding, dilation)
        if stride == kernel and padding == (0, 0) and dilation == (1, 1):
            out, col_index, row_index = _tiled_forward(x, kernel, xp)
            ctx.save_for_backward(col_index, row_index)
            ctx.x_shape = x.shape
            return out
        xpad = _pad(x, padding, value=-xp.inf)
        win = _windows(xpad, kernel, stride, dilation)
        kh, kw = kernel
        best = win[:, :, :, :, 0, 0].copy()
        for t in range(1, kh * kw):
            xp.maximum(best, win[:, :, :, :, t // kw, t % kw], out=best)
        ctx.save_for_backward(xpad, best)
        ctx.x_shape = None
        return best

    @staticmethod
    def backward(ctx, grad):
        kernel, stride, padding, dilation = ctx.meta
        xp = get_array_module(grad)
        if ctx.x_shape is not None:
            col_index, row_index = ctx.saved_tensors
            return (_tiled_backward(grad, ctx.x_shape, kernel, col_index, row_index, xp),
                    None, None, None, None)
        xpad, best = ctx.saved_tensors
        kh, kw = kernel
        ho, wo = grad.shape[2:]
        sh, sw = stride
        dh, dw = dilation
        overlapping = sh < dh * (kh - 1) + 1 or sw < dw * (kw - 1) + 1
        out = xp.zeros(xpad.shape, dtype=grad.dtype)
        taken = None
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                hit = xpad[:, :, rows, cols] == best
                if taken is None:
                    taken = hit
                else:
                    hit &= ~taken
                    taken |= hit
                if overlapping:
                    out[:, :, rows, cols] += grad * hit
                else:
                    xp.multiply(grad, hit, out=out[:, :, rows, cols])
        return _crop(out, padding), None, None, None, None
