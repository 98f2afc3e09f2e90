"""2-D convolution and max pooling on NCHW arrays via im2col and one GEMM each way.

``im2col`` views the padded input as sliding windows (no copy) and makes one contiguous
``(C*kh*kw, N*Ho*Wo)`` copy, so the convolution is a single GEMM with the flattened weight
(stride 1 copies full-width rows instead, see ``_im2col_full_width``).
Backward is two GEMMs and a ``col2im`` that adds the column gradient back at each of the
``kh*kw`` kernel offsets: kh*kw strided, vectorised adds instead of a loop over pixels.
"""

from __future__ import annotations

import numpy as np

from ddp.autograd.function import Function
from ddp.backend import get_array_module


def _pad(x, padding, value=0.0):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(xp_arr, kernel, stride, dilation):
    """View of shape (N, C, Ho, Wo, kh, kw) over a padded NCHW array (no copy)."""
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    n, c, h, w = xp_arr.shape
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    s = xp_arr.strides
    xp = get_array_module(xp_arr)
    shape = (n, c, ho, wo, kh, kw)
    strides = (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw)
    if xp is not np:  # CuPy's as_strided has no ``writeable`` argument
        return xp.lib.stride_tricks.as_strided(xp_arr, shape, strides)
    return np.lib.stride_tricks.as_strided(xp_arr, shape, strides, writeable=False)


def _col2im(dwin, padded_shape, stride, dilation, dtype, xp):
    """Sum a (C, kh, kw, N, Ho, Wo) window gradient back into a padded (N, C, H, W) array."""
    c, kh, kw, n, ho, wo = dwin.shape
    sh, sw = stride
    dh, dw = dilation
    # Accumulate in (C, N, H, W) order so each add walks both operands in the same order.
    out = xp.zeros((c, n) + tuple(padded_shape[2:]), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                j * dw:j * dw + sw * (wo - 1) + 1:sw] += dwin[:, i, j]
    return out.transpose(1, 0, 2, 3)


def _crop(x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


class Conv2d(Function):
    """``out[n, o, h, w] = sum_cij w[o, c, i, j] * x_pad[n, c, sh + di, sw + dj] + b[o]``.

    Columns are laid out ``(C*kh*kw, N*Ho*Wo)``: the im2col copy then reads and writes whole
    output rows at a time, which is several times faster than a pixel-major layout.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        xp = get_array_module(x)
        n, c = x.shape[:2]
        o, _, kh, kw = weight.shape
        xpad = _pad(x, padding)
        if stride == (1, 1):
            cols, ho, wo, row = _im2col_full_width(xpad, (kh, kw), dilation)
        else:
            win = _windows(xpad, (kh, kw), stride, dilation)
            ho, wo = win.shape[2], win.shape[3]
            row = wo
            cols = xp.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * kh * kw, -1)
        w2 = weight.reshape(o, -1)
        out = w2 @ cols  # (O, N*Ho*row)
        if bias is not None:
            out += bias[:, None]
        ctx.save_for_backward(cols if ctx.needs_input_grad[1:2] == (True,) else None,
                              w2 if ctx.needs_input_grad[:1] == (True,) else None)
        ctx.meta = (xpad.shape, weight.shape, stride, padding, dilation, ho, wo, row)
        ctx.has_bias = bias is not None
        out = out.reshape(o, n, ho, row)[:, :, :, :wo]  # drop the wrapped columns, if any
        return xp.ascontiguousarray(out.transpose(1, 0, 2, 3))

    @staticmethod
    def backward(ctx, grad):
        cols, w2 = ctx.saved_tensors
        pad_shape, w_shape, stride, padding, dilation, ho, wo, row = ctx.meta
        needs = ctx.needs_input_grad
        xp = get_array_module(grad)
        n, o = grad.shape[:2]
        g4 = xp.empty((o, n, ho, row), dtype=grad.dtype)
        g4[:, :, :, wo:] = 0  # wrapped columns: zero, so they add nothing below
        g4[:, :, :, :wo] = grad.transpose(1, 0, 2, 3)
        g2 = g4.reshape(o, -1)  # (O, N*Ho*row)
        gx = gw = gb = None
        if needs[1]:
            gw = (g2 @ cols.T).reshape(w_shape)
        if ctx.has_bias and needs[2]:
            gb = g2.sum(axis=1)
        if needs[0]:
            c, kh, kw = w_shape[1:]
            dcols = w2.T @ g2
            if stride == (1, 1):
                gpad = _col2im_full_width(dcols.reshape(c, kh, kw, n, ho * row), pad_shape,
                                          dilation)
            else:
                gpad = _col2im(dcols.reshape(c, kh, kw, n, ho, wo), pad_shape, stride, dilation,
                               grad.dtype, xp)
            gx = _crop(gpad, padding)
        return gx, gw, gb, None, None, None


def _im2col_full_width(xpad, kernel, dilation):
    """Stride-1 columns ``(C*kh*kw, N*Ho*Wp)`` whose rows span the full padded width ``Wp``.

    With stride 1, the pixels that kernel offset (i, j) reads for the ``Ho`` output rows of an
    image are one contiguous run of ``Ho*Wp`` elements of the C-major flattened input, so the
    copy moves long runs instead of ``Wo``-element rows. The last ``Wp - Wo`` columns of each
    output row wrap into the next row: the caller drops them from the output (forward) and
    gives them a zero gradient (backward). Returns ``(cols, Ho, Wo, Wp)``.
    """
    xp = get_array_module(xpad)
    n, c, hp, wp = xpad.shape
    (kh, kw), (dh, dw) = kernel, dilation
    ho, wo = hp - dh * (kh - 1), wp - dw * (kw - 1)
    plane = hp * wp
    flat = xp.empty((c, n * plane + dw * (kw - 1)), dtype=xpad.dtype)  # the tail: last run's
    flat[:, n * plane:] = 0                                             # wrapped reads
    flat[:, :n * plane].reshape(c, n, hp, wp)[...] = xpad.transpose(1, 0, 2, 3)
    s0, s1 = flat.strides
    win = _as_strided(flat, (c, kh, kw, n, ho * wp), (s0, dh * wp * s1, dw * s1, plane * s1, s1))
    return xp.ascontiguousarray(win).reshape(c * kh * kw, n * ho * wp), ho, wo, wp


def _col2im_full_width(dcols, padded_shape, dilation):
    """Inverse of ``_im2col_full_width``: sum ``(C, kh, kw, N, Ho*Wp)`` into a padded NCHW array."""
    xp = get_array_module(dcols)
    c, kh, kw, n, run = dcols.shape
    _, _, hp, wp = padded_shape
    dh, dw = dilation
    plane = hp * wp
    flat = xp.zeros((c, n * plane + dw * (kw - 1)), dtype=dcols.dtype)
    s0, s1 = flat.strides
    for i in range(kh):
        for j in range(kw):
            start = i * dh * wp + j * dw
            # runs of different images do not overlap (run <= plane): += is safe on this view
            view = _as_strided(flat[:, start:], (c, n, run), (s0, plane * s1, s1), writeable=True)
            view += dcols[:, i, j]
    return flat[:, :n * plane].reshape(c, n, hp, wp).transpose(1, 0, 2, 3)


def _as_strided(a, shape, strides, writeable=False):
    xp = get_array_module(a)
    if xp is not np:  # CuPy's as_strided has no ``writeable`` argument
        return xp.lib.stride_tricks.as_strided(a, shape, strides)
    return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=writeable)


class MaxPool2d(Function):
    """Maximum over each window; the gradient goes to the first maximal element, as in torch.

    Both directions make kh*kw vectorised passes, one per kernel offset, over strided views of
    the input: no window copies. Backward finds, per window, the first offset equal to the max.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation):
        xp = get_array_module(x)
        xpad = _pad(x, padding, value=-xp.inf)
        win = _windows(xpad, kernel, stride, dilation)
        kh, kw = kernel
        best = win[:, :, :, :, 0, 0].copy()
        for t in range(1, kh * kw):
            xp.maximum(best, win[:, :, :, :, t // kw, t % kw], out=best)
        ctx.save_for_backward(xpad, best)
        ctx.meta = (kernel, stride, padding, dilation)
        return best

    @staticmethod
    def backward(ctx, grad):
        xpad, best = ctx.saved_tensors
        (kh, kw), stride, padding, dilation = ctx.meta
        xp = get_array_module(grad)
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
