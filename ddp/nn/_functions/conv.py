"""2-D convolution and max pooling on NCHW arrays via im2col and one GEMM each way.

``im2col`` views the padded input as sliding windows (no copy) and makes one contiguous
``(N*Ho*Wo, C*kh*kw)`` copy, so the convolution is a single GEMM with the flattened weight.
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
        win = _windows(xpad, (kh, kw), stride, dilation)
        ho, wo = win.shape[2], win.shape[3]
        cols = xp.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * kh * kw, -1)
        w2 = weight.reshape(o, -1)
        out = w2 @ cols  # (O, N*Ho*Wo)
        if bias is not None:
            out += bias[:, None]
        ctx.save_for_backward(cols if ctx.needs_input_grad[1:2] == (True,) else None,
                              w2 if ctx.needs_input_grad[:1] == (True,) else None)
        ctx.meta = (xpad.shape, weight.shape, stride, padding, dilation, ho, wo)
        ctx.has_bias = bias is not None
        return xp.ascontiguousarray(out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))

    @staticmethod
    def backward(ctx, grad):
        cols, w2 = ctx.saved_tensors
        pad_shape, w_shape, stride, padding, dilation, ho, wo = ctx.meta
        needs = ctx.needs_input_grad
        xp = get_array_module(grad)
        n, o = grad.shape[:2]
        g2 = xp.ascontiguousarray(grad.transpose(1, 0, 2, 3)).reshape(o, -1)  # (O, N*Ho*Wo)
        gx = gw = gb = None
        if needs[1]:
            gw = (g2 @ cols.T).reshape(w_shape)
        if ctx.has_bias and needs[2]:
            gb = g2.sum(axis=1)
        if needs[0]:
            c, kh, kw = w_shape[1:]
            dcols = (w2.T @ g2).reshape(c, kh, kw, n, ho, wo)
            gx = _crop(_col2im(dcols, pad_shape, stride, dilation, grad.dtype, xp), padding)
        return gx, gw, gb, None, None, None


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
