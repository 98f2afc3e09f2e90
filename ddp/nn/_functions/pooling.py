"""2-D max pooling on NCHW arrays.

Two paths, same contract (the gradient of each window goes to its *first* maximal element in
row-major order, torch's tie rule):

* Tiling windows (kernel == stride, no padding, no dilation: ``max_pool2d(x, 2)``), the common
  case: the maximum is taken in two separable steps, first over the ``kh`` rows of each window
  (strided views whose inner runs are whole input rows), then over the ``kw`` neighbours within a
  row (deinterleaved into contiguous arrays). Each step records which row / column won as a
  compact uint8 index, so backward is a few contiguous multiplies and two interleaving copies,
  with no compares against the input.
  On NumPy arrays the compiled kernel of ``ddp.kernels.max_pool2d_tiles`` does both steps in
  one pass for 2x2 tiles and keeps one uint8 offset per window.
* Any other windows: kh*kw vectorised passes over strided views of the padded input; backward
  finds, per window, the first offset equal to the max.
"""

from __future__ import annotations

from ddp import kernels
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
            ctx.x_shape = x.shape
            compiled = kernels.max_pool2d_tiles(x, kernel)
            if compiled is not None:
                out, index = compiled
                ctx.save_for_backward(index)
                return out
            out, col_index, row_index = _tiled_forward(x, kernel, xp)
            ctx.save_for_backward(col_index, row_index)
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
        if ctx.x_shape is not None and len(ctx.saved_tensors) == 1:
            (index,) = ctx.saved_tensors
            return (kernels.max_pool2d_tiles_backward(grad, index, ctx.x_shape, kernel),
                    None, None, None, None)
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


# ------------------------------------------------------------------------------ average pooling
def _window_slices(offset: int, dilation: int, stride: int, count: int) -> slice:
    """The positions kernel offset ``offset`` reads for ``count`` outputs along one axis."""
    start = offset * dilation
    return slice(start, start + stride * (count - 1) + 1, stride)


def _avg_divisors(size: int, out: int, k: int, s: int, p: int, include_pad: bool) -> list[int]:
    """torch's divisor of each window along one axis: its extent clipped to the padded input
    (``count_include_pad``) or to the input itself."""
    counts = []
    for o in range(out):
        start = o * s - p
        if include_pad:
            counts.append(min(start + k, size + p) - start)
        else:
            counts.append(min(start + k, size) - max(start, 0))
    return counts


class AvgPool2d(Function):
    """Mean over each ``kernel`` window of the zero-padded input, ``output_size`` windows.

    The divisor is ``divisor`` when given (``divisor_override``), else the window's extent
    inside the padded input (``count_include_pad``: ``kh * kw`` except for ``ceil_mode``'s last
    windows, which hang over the padding) or inside the input itself, as torch. Backward
    spreads ``grad / divisor`` back over each window.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, output_size, count_include_pad, divisor):
        xp = get_array_module(x)
        (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, output_size
        h, w = x.shape[2:]
        # the bottom/right padding also covers ceil_mode's windows past the padded input
        extra = (max(ph, (ho - 1) * sh + kh - h - ph), max(pw, (wo - 1) * sw + kw - w - pw))
        xpad = x
        if (ph, pw) != (0, 0) or extra != (0, 0):
            xpad = xp.pad(x, ((0, 0), (0, 0), (ph, extra[0]), (pw, extra[1])))
        total = xp.zeros(x.shape[:2] + (ho, wo), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                total += xpad[:, :, _window_slices(i, 1, sh, ho), _window_slices(j, 1, sw, wo)]
        if divisor is None:
            rows = _avg_divisors(h, ho, kh, sh, ph, count_include_pad)
            cols = _avg_divisors(w, wo, kw, sw, pw, count_include_pad)
            if len(set(rows)) == 1 and len(set(cols)) == 1:
                divisor = rows[0] * cols[0]
            else:
                divisor = xp.asarray(rows, dtype=x.dtype)[:, None] * xp.asarray(cols,
                                                                               dtype=x.dtype)
        total /= divisor
        ctx.meta = (x.shape, kernel, stride, padding, xpad.shape, divisor)
        return total

    @staticmethod
    def backward(ctx, grad):
        x_shape, (kh, kw), stride, (ph, pw), padded_shape, divisor = ctx.meta
        xp = get_array_module(grad)
        ho, wo = grad.shape[2:]
        share = grad / divisor
        out = xp.zeros(padded_shape, dtype=grad.dtype)
        for i in range(kh):
            for j in range(kw):
                out[:, :, _window_slices(i, 1, stride[0], ho),
                    _window_slices(j, 1, stride[1], wo)] += share
        return (out[:, :, ph:ph + x_shape[2], pw:pw + x_shape[3]], None, None, None, None, None,
                None)


def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive windows along one axis: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


class AdaptiveAvgPool2d(Function):
    """Mean over torch's adaptive windows, which make an ``(Ho, Wo)`` output of any input.

    A rectangle's mean is the mean over its rows of the mean over its columns, so forward
    averages along H (one slice per output row), then along W; backward spreads the gradient
    back in the reverse order. Windows that tile the input exactly take one reshape instead.
    """

    @staticmethod
    def forward(ctx, x, output_size):
        xp = get_array_module(x)
        n, c, h, w = x.shape
        ho, wo = output_size
        ctx.meta = (x.shape, output_size)
        if h % ho == 0 and w % wo == 0:
            return x.reshape(n, c, ho, h // ho, wo, w // wo).mean(axis=(3, 5))
        rows = xp.empty((n, c, ho, w), dtype=x.dtype)
        for i, (start, stop) in enumerate(adaptive_bounds(h, ho)):
            rows[:, :, i] = x[:, :, start:stop].mean(axis=2)
        out = xp.empty((n, c, ho, wo), dtype=x.dtype)
        for j, (start, stop) in enumerate(adaptive_bounds(w, wo)):
            out[:, :, :, j] = rows[:, :, :, start:stop].mean(axis=3)
        return out

    @staticmethod
    def backward(ctx, grad):
        (n, c, h, w), (ho, wo) = ctx.meta
        xp = get_array_module(grad)
        if h % ho == 0 and w % wo == 0:
            kh, kw = h // ho, w // wo
            share = (grad / (kh * kw))[:, :, :, None, :, None]
            out = xp.broadcast_to(share, (n, c, ho, kh, wo, kw)).reshape(n, c, h, w)
            return xp.ascontiguousarray(out), None
        rows = xp.zeros((n, c, ho, w), dtype=grad.dtype)
        for j, (start, stop) in enumerate(adaptive_bounds(w, wo)):
            rows[:, :, :, start:stop] += (grad[:, :, :, j] / (stop - start))[:, :, :, None]
        out = xp.zeros((n, c, h, w), dtype=grad.dtype)
        for i, (start, stop) in enumerate(adaptive_bounds(h, ho)):
            out[:, :, start:stop] += (rows[:, :, i] / (stop - start))[:, :, None]
        return out, None
