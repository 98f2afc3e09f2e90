"""Compiled convolution kernels: im2col and col2im with the zero padding done in the loop.

Columns are exact (``B*Ho*Wo`` per kernel offset, no wrapped columns): a compiled loop copies an
output row as fast as NumPy copies a long run, so nothing is gained by the full-width trick of
``ddp.nn._functions.conv`` (which wastes ``(Wp - Wo) / Wo`` of every GEMM: half of it at 4x4).
Padding costs no pass of its own: positions outside the input are written as zeros (im2col) or
skipped (col2im), so neither the padded input nor the padded gradient is ever made. Both
kernels loop over a range of images, so disjoint ranges may run on different threads.

The loops index flat arrays with unsigned integers: numba wraps negative signed indices
(a branch per access), which keeps LLVM from vectorising the row copies (2.5x slower).
"""

from __future__ import annotations

import numpy as np

from ddp.kernels import reference
from ddp.kernels.jit import compiled


@compiled
def _im2col_range(x, cols, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
                  start, stop):
    """``cols[(c*kh + i)*kw + j, (b*Ho + oh)*Wo + ow] = x_pad[b, c, oh*sh + i*dh, ow*sw + j*dw]``
    for images ``b`` in ``[start, stop)`` of the NCHW ``x``, both flat (zero where
    the padded position is padding); ``cols`` holds the columns of images ``start:``."""
    ncols = np.uint64((stop - start) * ho * wo)
    step = np.uint64(sw)
    for b in range(start, stop):
        for c in range(channels):
            plane = ((b * channels + c) * height) * width
            for i in range(kh):
                for j in range(kw):
                    r = np.uint64((c * kh + i) * kw + j)
                    off = j * dw - pw
                    # the ow in [lo, hi) read columns ow*sw + off inside [0, width)
                    lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    hi = 0 if width - 1 - off < 0 else min((width - 1 - off) // sw + 1, wo)
                    lo = min(lo, hi)
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        d = r * ncols + np.uint64(((b - start) * ho + oh) * wo)
                        if ih < 0 or ih >= height:
                            for k in range(np.uint64(wo)):
                                cols[d + k] = 0
                            continue
                        for k in range(np.uint64(lo)):
                            cols[d + k] = 0
                        s = np.uint64(plane + ih * width + lo * sw + off)
                        d0 = d + np.uint64(lo)
                        if sw == 1:  # a contiguous run
                            for k in range(np.uint64(hi - lo)):
                                cols[d0 + k] = x[s + k]
                        else:
                            for k in range(np.uint64(hi - lo)):
                                cols[d0 + k] = x[s + k * step]
                        for k in range(np.uint64(hi), np.uint64(wo)):
                            cols[d + k] = 0


@compiled
def _col2im_range(cols, out, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
                  start, stop):
    """The adjoint of ``_im2col_range``: ``out`` (flat NCHW) for images ``b`` in
    ``[start, stop)`` is the sum of ``cols`` scattered back; padding positions are dropped."""
    ncols = np.uint64((stop - start) * ho * wo)
    step = np.uint64(sw)
    for b in range(start, stop):
        for c in range(channels):
            plane = ((b * channels + c) * height) * width
            p0 = np.uint64(plane)
            for k in range(np.uint64(height * width)):
                out[p0 + k] = 0
            for i in range(kh):
                for j in range(kw):
                    r = np.uint64((c * kh + i) * kw + j)
                    off = j * dw - pw
                    # the ow in [lo, hi) read columns ow*sw + off inside [0, width)
                    lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    hi = 0 if width - 1 - off < 0 else min((width - 1 - off) // sw + 1, wo)
                    lo = min(lo, hi)
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= height:
                            continue
                        d0 = r * ncols + np.uint64(((b - start) * ho + oh) * wo + lo)
                        s = np.uint64(plane + ih * width + lo * sw + off)
                        if sw == 1:
                            for k in range(np.uint64(hi - lo)):
                                out[s + k] += cols[d0 + k]
                        else:
                            for k in range(np.uint64(hi - lo)):
                                out[s + k * step] += cols[d0 + k]


def _compilable(*arrays):
    first = arrays[0]
    return all(a.dtype == first.dtype and a.flags.c_contiguous for a in arrays)


def im2col(x, kernel, stride, padding, dilation, out):
    """``reference.im2col``: exact columns of a contiguous NCHW ``x`` into ``out``."""
    if not _compilable(x, out):
        return reference.im2col(x, kernel, stride, padding, dilation, out)
    ho, wo = reference.conv_output_size(x.shape[2:], kernel, stride, padding, dilation)
    _im2col_range(x.reshape(-1), out.reshape(-1), *x.shape[1:], *kernel, *stride,
                  *padding, *dilation, ho, wo, 0, x.shape[0])
    return out


def col2im(cols, kernel, stride, padding, dilation, out):
    """``reference.col2im``: the input gradient ``out`` (NCHW, written) from its columns."""
    if not _compilable(cols, out):
        return reference.col2im(cols, kernel, stride, padding, dilation, out)
    ho, wo = reference.conv_output_size(out.shape[2:], kernel, stride, padding, dilation)
    _col2im_range(cols.reshape(-1), out.reshape(-1), *out.shape[1:], *kernel,
                  *stride, *padding, *dilation, ho, wo, 0, out.shape[0])
    return out
