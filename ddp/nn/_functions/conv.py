"""2-D convolution on NCHW arrays via im2col and GEMMs, a chunk of images at a time.

NumPy arrays take exact columns from ``ddp.kernels.im2col`` (``(C*kh*kw, B*Ho*Wo)``, the zero
padding written by the copy itself; compiled, or the NumPy reference): one GEMM per chunk and
direction, and ``ddp.kernels.col2im`` for the input gradient (``_exact_forward``). A chunk of one
image needs no transposing copy: its GEMM writes ``(O, Ho*Wo)``, which is that image's output.

CuPy arrays keep this module's own copies: ``im2col`` views the padded input as sliding windows
(no copy) and makes one contiguous ``(C*kh*kw, B*Ho*Wo)`` copy per chunk of ``B`` images (stride
1 copies full-width rows instead, see ``_im2col_full_width``). Backward is two GEMMs per chunk
and a ``col2im`` that adds the column gradient back at each of the ``kh*kw`` kernel offsets:
kh*kw strided, vectorised adds instead of a loop over pixels.
Per-chunk temporaries live in a per-thread workspace (``_scratch``) reused across calls.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ddp import kernels
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.kernels import parallel
from ddp.ops._util import reshape_fresh

_workspace = threading.local()


def _scratch(name, shape, dtype, xp):
    """A per-thread temporary reused across calls, for arrays that never leave one call.

    Fresh multi-megabyte arrays cost page faults on every call (glibc hands large blocks back
    to the kernel when they are freed), which on the CNN step cost more than the copies that
    fill them. CuPy has its own memory pool: there this is a plain ``empty``.
    """
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    size = math.prod(shape)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    buf = buffers.get((name, dtype))
    if buf is None or buf.size < size:
        buf = buffers[(name, dtype)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


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
    shape = (n, c, ho, wo, kh, kw)
    strides = (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw)
    return _as_strided(xp_arr, shape, strides)


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


# Columns per chunk. Smaller chunks stay in cache, but the column-gradient GEMM (inner dimension
# O, often only 32-64) loses efficiency on narrow chunks, so ~16 images of a 26x26x32 input.
_CHUNK_COLUMN_BYTES = 12 << 20


def _chunk_images(n, per_image_bytes):
    """Images per chunk: columns of about ``_CHUNK_COLUMN_BYTES``, chunks of even size."""
    most = max(1, _CHUNK_COLUMN_BYTES // max(1, per_image_bytes))
    count = max(1, -(-n // most))
    return max(1, -(-n // count))


def _columns(xpad, kernel, stride, dilation):
    """Columns ``(C*kh*kw, N*Ho*row)`` of a padded NCHW chunk; returns ``(cols, Ho, Wo, row)``.

    ``row`` is the number of columns per output row: ``Wo``, or the padded width for stride 1
    (see ``_im2col_full_width``: the extra columns per row are to be dropped / zero-filled).
    """
    if stride == (1, 1):
        return _im2col_full_width(xpad, kernel, dilation)
    xp = get_array_module(xpad)
    c = xpad.shape[1]
    kh, kw = kernel
    win = _windows(xpad, kernel, stride, dilation)
    ho, wo = win.shape[2], win.shape[3]
    cols = xp.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * kh * kw, -1)
    return cols, ho, wo, wo


class Conv2d(Function):
    """``out[n, o, h, w] = sum_cij w[o, c, i, j] * x_pad[n, c, sh + di, sw + dj] + b[o]``.

    Columns are laid out ``(C*kh*kw, N*Ho*Wo)``: the im2col copy then reads and writes whole
    output rows at a time, which is several times faster than a pixel-major layout. The batch is
    processed in chunks of a few images (one GEMM per chunk and direction), so the columns stay
    small and hot in cache instead of one batch-sized buffer (46 MB for the MNIST CNN's conv2)
    that costs fresh-page faults on every call. Backward recomputes each chunk's columns from
    the saved padded input rather than keeping them: a copy is cheaper than the page faults.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        if get_array_module(x) is np:
            return _exact_forward(ctx, x, weight, bias, stride, padding, dilation)
        xp = get_array_module(x)
        n, c = x.shape[:2]
        o, _, kh, kw = weight.shape
        xpad = _pad(x, padding)
        w2 = weight.reshape(o, -1)
        chunk = _chunk_images(n, c * kh * kw * xpad.shape[2] * xpad.shape[3] * x.itemsize)
        if xp is np:  # at least one chunk per thread (see _over_chunks)
            chunk = min(chunk, -(-n // parallel.num_threads()))
        ho, wo = (
            (size - d * (k - 1) - 1) // s + 1
            for size, k, s, d in zip(xpad.shape[2:], (kh, kw), stride, dilation, strict=True)
        )
        out = xp.empty((n, o, ho, wo), dtype=x.dtype)

        def run(start, stop):
            cols, _, _, row = _columns(xpad[start:stop], (kh, kw), stride, dilation)
            y = _scratch("gemm", (o, cols.shape[1]), x.dtype, xp)
            xp.matmul(w2, cols, out=y)
            y = y.reshape(o, stop - start, ho, row)
            _store_output(out[start:stop], y[:, :, :, :wo], bias)

        _over_chunks(n, chunk, xp, run)
        _save_for_backward(ctx, xpad, w2, x.shape, weight.shape, stride, padding, dilation,
                           chunk, bias is not None, exact=False)
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.exact:
            return _exact_backward(ctx, grad)
        xpad, w2 = ctx.saved_tensors
        x_shape, w_shape, stride, padding, dilation, chunk = ctx.meta
        needs = ctx.needs_input_grad
        xp = get_array_module(grad)
        n, o, ho, wo = grad.shape
        c, kh, kw = w_shape[1:]
        hp, wp = x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]
        row = wp if stride == (1, 1) else wo
        gx = xp.empty(x_shape, dtype=grad.dtype) if needs[0] else None
        want_w, want_b = needs[1], ctx.has_bias and needs[2]
        partial = {}  # first image of a thread's range -> its (weight, bias) gradient sums

        def run(first, start, stop):
            b = stop - start
            gw, gb = partial.setdefault(first, (
                xp.zeros((o, c * kh * kw), dtype=grad.dtype) if want_w else None,
                xp.zeros(o, dtype=grad.dtype) if want_b else None))
            g2 = _load_grad(grad[start:stop], row, gb).reshape(o, -1)  # (O, B*Ho*row)
            if gw is not None:
                cols = _columns(xpad[start:stop], (kh, kw), stride, dilation)[0]
                gw += g2 @ cols.T
            if gx is not None:
                dcols = _scratch("gemm", (w2.shape[1], g2.shape[1]), grad.dtype, xp)
                xp.matmul(w2.T, g2, out=dcols)
                if stride == (1, 1):
                    _col2im_full_width(dcols.reshape(c, kh, kw, b, ho * row), gx[start:stop],
                                       padding, dilation)
                else:
                    gpad = _col2im(dcols.reshape(c, kh, kw, b, ho, wo), (b, c, hp, wp), stride,
                                   dilation, grad.dtype, xp)
                    gx[start:stop] = _crop(gpad, padding)

        _over_chunks(n, chunk, xp, run, with_first=True)
        gw, gb = _sum_partials(partial, want_w, want_b, w_shape)
        return gx, gw, gb, None, None, None


# Columns a GEMM should have at least (images per chunk on the exact path): narrower GEMMs
# (one 8x8 image is 64 columns) run far below the BLAS kernel's speed.
_MIN_GEMM_COLUMNS = 1024
# Column elements a chunk should have at least: each chunk costs some 20-50 us of Python (views,
# scratch lookup, dispatch), and two threads running many tiny chunks mostly wait for the GIL
# (the MNIST CNN's first conv, 9 rows: 2-image chunks made its backward 2.7x slower at 2
# threads than at 1).
_MIN_CHUNK_ELEMENTS = 1 << 18


def _exact_chunk(n, image_columns, rows, itemsize):
    """Images per chunk on the exact path: enough for ``_MIN_GEMM_COLUMNS`` columns and
    ``_MIN_CHUNK_ELEMENTS`` column elements, at most ``_CHUNK_COLUMN_BYTES`` of columns, and at
    least one chunk per thread."""
    chunk = max(1, -(-_MIN_GEMM_COLUMNS // image_columns),
                -(-_MIN_CHUNK_ELEMENTS // (rows * image_columns)))
    chunk = min(chunk, max(1, _CHUNK_COLUMN_BYTES // (rows * image_columns * itemsize)))
    return max(1, min(chunk, -(-n // parallel.num_threads()), n))


def _exact_forward(ctx, x, weight, bias, stride, padding, dilation):
    """NumPy forward on exact columns (``ddp.kernels.im2col``: padding done in the copy).

    A chunk of one image needs no transposing copies: its GEMM writes ``(O, Ho*Wo)``, which is
    that image's output.
    """
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    o, c, kh, kw = weight.shape
    kernel = (kh, kw)
    ho, wo = kernels.conv_output_size(x.shape[2:], kernel, stride, padding, dilation)
    w2 = weight.reshape(o, -1)
    chunk = _exact_chunk(n, ho * wo, c * kh * kw, x.itemsize)
    out = np.empty((n, o, ho, wo), dtype=x.dtype)

    def run(start, stop):
        b = stop - start
        cols = _scratch("cols", (c * kh * kw, b * ho * wo), x.dtype, np)
        kernels.im2col(x[start:stop], kernel, stride, padding, dilation, cols)
        if b == 1:
            y = out[start].reshape(o, ho * wo)
            np.matmul(w2, cols, out=y)
            if bias is not None:
                y += bias[:, None]
            return
        y = _scratch("gemm", (o, b * ho * wo), x.dtype, np)
        np.matmul(w2, cols, out=y)
        _store_output(out[start:stop], y.reshape(o, b, ho, wo), bias)

    _over_chunks(n, chunk, np, run)
    _save_for_backward(ctx, x, w2, x.shape, weight.shape, stride, padding, dilation, chunk,
                       bias is not None, exact=True)
    return out


def _save_for_backward(ctx, x_kept, w2, x_shape, w_shape, stride, padding, dilation, chunk,
                       has_bias, exact):
    """What both forwards keep: the (padded, on the full-width path) input only when the weight
    needs a gradient, the flattened weight only when the input does, and the layout."""
    needs = ctx.needs_input_grad
    ctx.save_for_backward(x_kept if needs[1:2] == (True,) else None,
                          w2 if needs[:1] == (True,) else None)
    ctx.meta = (x_shape, w_shape, stride, padding, dilation, chunk)
    ctx.has_bias = has_bias
    ctx.exact = exact


def _exact_backward(ctx, grad):
    """Backward of :func:`_exact_forward`: per chunk, the weight gradient from recomputed
    columns and the input gradient through ``ddp.kernels.col2im``."""
    x, w2 = ctx.saved_tensors
    x_shape, w_shape, stride, padding, dilation, chunk = ctx.meta
    needs = ctx.needs_input_grad
    grad = np.ascontiguousarray(grad)
    n, o, ho, wo = grad.shape
    c, kh, kw = w_shape[1:]
    kernel, rows = (kh, kw), c * kh * kw
    gx = np.empty(x_shape, dtype=grad.dtype) if needs[0] else None
    want_w, want_b = needs[1], ctx.has_bias and needs[2]
    partial = {}  # first image of a thread's range -> its (weight, bias) gradient sums

    def run(first, start, stop):
        b = stop - start
        gw, gb = partial.setdefault(first, (
            np.zeros((o, rows), dtype=grad.dtype) if want_w else None,
            np.zeros(o, dtype=grad.dtype) if want_b else None))
        if b == 1:
            g2 = grad[start].reshape(o, ho * wo)
        else:
            g4 = _scratch("grad", (o, b, ho, wo), grad.dtype, np)
            g4[...] = grad[start:stop].transpose(1, 0, 2, 3)
            g2 = g4.reshape(o, b * ho * wo)
        if gb is not None:
            gb += g2.sum(axis=1)
        if gw is not None:
            cols = _scratch("cols", (rows, b * ho * wo), grad.dtype, np)
            kernels.im2col(x[start:stop], kernel, stride, padding, dilation, cols)
            gw += g2 @ cols.T
        if gx is not None:
            dcols = _scratch("gemm", (rows, b * ho * wo), grad.dtype, np)
            np.matmul(w2.T, g2, out=dcols)
            kernels.col2im(dcols, kernel, stride, padding, dilation, gx[start:stop])

    _over_chunks(n, chunk, np, run, with_first=True)
    gw, gb = _sum_partials(partial, want_w, want_b, w_shape)
    return gx, gw, gb, None, None, None


def _sum_partials(partial, want_w, want_b, w_shape):
    """``(weight gradient, bias gradient)``: the threads' partial sums added in the order of
    their first images (so the result does not depend on which thread finished first)."""
    sums = [partial[first] for first in sorted(partial)]
    gw = gb = None
    if want_w:
        gw = sums[0][0]
        for more in sums[1:]:
            gw += more[0]
        gw = reshape_fresh(gw, w_shape)
    if want_b:
        gb = sums[0][1]
        for more in sums[1:]:
            gb += more[1]
    return gw, gb


def _over_chunks(n, chunk, xp, run, with_first=False):
    """Call ``run(start, stop)`` for each chunk of ``chunk`` images of a batch of ``n``.

    On the CPU the chunks are split over the rank's threads (``ddp.kernels.parallel``), each
    thread taking a contiguous run of chunks with single-threaded BLAS calls (as torch's
    convolutions run a parallel loop over images): the im2col and col2im copies then run on
    every core, and no small GEMM is handed between BLAS threads. ``with_first`` passes the
    first image of the thread's run first, ``run(first, start, stop)``, so a thread can keep
    its own partial sums. On a GPU the chunks run in order.
    """
    starts = list(range(0, n, chunk))

    def run_chunks(begin, end):
        for i in range(begin, end):
            start, stop = starts[i], min(n, starts[i] + chunk)
            if with_first:
                run(starts[begin], start, stop)
            else:
                run(start, stop)

    if xp is not np or len(starts) < 2 or parallel.num_threads() < 2:
        run_chunks(0, len(starts))
        return
    with parallel.one_blas_thread():
        parallel.for_ranges(len(starts), run_chunks, min_per_thread=1)


def _store_output(out, y, bias):
    """``out (N, O, Ho, Wo) = y (O, N, Ho, Wo) + bias``: a transposing copy, bias added after."""
    out[...] = y.transpose(1, 0, 2, 3)
    if bias is not None:
        out += bias[:, None, None]  # contiguous: much faster than adding during the copy


def _load_grad(grad, row, grad_bias):
    """``(O, N, Ho, row)`` copy of an ``(N, O, Ho, Wo)`` gradient, zero past ``Wo``.

    The zero columns are the wrapped ones of ``_im2col_full_width``: they add nothing to the
    weight gradient. Adds the bias gradient into ``grad_bias`` (if not None) on the way, while
    the copy is in cache.
    """
    xp = get_array_module(grad)
    n, o, ho, wo = grad.shape
    g4 = _scratch("grad", (o, n, ho, row), grad.dtype, xp)
    g4[:, :, :, wo:] = 0
    g4[:, :, :, :wo] = grad.transpose(1, 0, 2, 3)
    if grad_bias is not None:
        grad_bias += g4.reshape(o, -1).sum(axis=1)
    return g4


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
    # the tail of ``flat``: the last run's wrapped reads
    flat = _scratch("im2col", (c, n * plane + dw * (kw - 1)), xpad.dtype, xp)
    cols = _scratch("cols", (c, kh, kw, n, ho * wp), xpad.dtype, xp)
    flat[:, n * plane:] = 0
    flat[:, :n * plane].reshape(c, n, hp, wp)[...] = xpad.transpose(1, 0, 2, 3)
    s0, s1 = flat.strides
    cols[...] = _as_strided(flat, (c, kh, kw, n, ho * wp), (s0, dh * wp * s1, dw * s1,
                                                             plane * s1, s1))
    return cols.reshape(c * kh * kw, n * ho * wp), ho, wo, wp


def _col2im_full_width(dcols, grad_x, padding, dilation):
    """Inverse of ``_im2col_full_width``: sum ``(C, kh, kw, N, Ho*Wp)`` into ``grad_x``.

    ``grad_x`` is the ``(N, C, H, W)`` gradient of the unpadded input, written in place.
    """
    xp = get_array_module(dcols)
    c, kh, kw, n, run = dcols.shape
    (ph, pw), (dh, dw) = padding, dilation
    h, w = grad_x.shape[2:]
    hp, wp = h + 2 * ph, w + 2 * pw
    plane = hp * wp
    flat = _scratch("col2im", (c, n * plane + dw * (kw - 1)), dcols.dtype, xp)
    s0, s1 = flat.strides
    flat[...] = 0
    for i in range(kh):
        for j in range(kw):
            start = i * dh * wp + j * dw
            # runs of different images do not overlap (run <= plane): += is safe on this view
            view = _as_strided(flat[:, start:], (c, n, run), (s0, plane * s1, s1), writeable=True)
            view += dcols[:, i, j]
    padded = flat[:, :n * plane].reshape(c, n, hp, wp)
    grad_x[...] = padded[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)


def _as_strided(a, shape, strides, writeable=False):
    xp = get_array_module(a)
    if xp is not np:  # CuPy's as_strided has no ``writeable`` argument
        return xp.lib.stride_tricks.as_strided(a, shape, strides)
    return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=writeable)
