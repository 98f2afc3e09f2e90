"""Compiled row kernels: layer norm, softmax and softmax + NLL over the rows of a 2-D array.

Each row is short (a model's width, a sequence's length, the classes) and stays in L1 while a
kernel makes its two or three passes over it; the threads of ``ddp.kernels.parallel`` take
contiguous blocks of rows. Layer norm runs on float32 and float64 (float64 accumulators); the
softmax kernels on float32 (their ``exp`` is ``_exp``'s), other dtypes take the reference.
Non-finite values flow as in the reference: a row holding NaN or +inf, or only -inf, comes out
NaN; -inf entries of a row with a finite maximum get probability 0.
"""

from __future__ import annotations

import math

import numpy as np

from ddp.kernels import reference
from ddp.kernels.cpu._exp import exp_nonpositive_float32
from ddp.kernels.jit import compiled
from ddp.kernels.parallel import MIN_PER_THREAD, for_ranges


def _for_rows(x2, kernel) -> None:
    """``kernel(start, stop)`` over blocks of the rows of ``x2`` on the rank's threads."""
    for_ranges(x2.shape[0], kernel, min_per_thread=max(1, MIN_PER_THREAD // max(1, x2.shape[1])))


def _rows_ok(*arrays, dtypes=(np.float32, np.float64)) -> bool:
    """Whether the compiled kernels take these 2-D arrays: C-contiguous, one dtype among
    ``dtypes``, at least one column."""
    first = arrays[0]
    return (first.ndim == 2 and first.shape[1] > 0 and first.dtype in dtypes
            and all(a.dtype == first.dtype and a.flags.c_contiguous and a.shape == first.shape
                    for a in arrays))


@compiled
def _layer_norm_rows(x, weight, bias, eps, out, xhat, rstd, start, stop):
    d = x.shape[1]
    for k in range(start, stop):
        r = np.uint64(k)  # unsigned: no wrap-around test, so the loops vectorise
        total = 0.0
        for j in range(d):
            total += x[r, j]
        mean = total / d
        squares = 0.0
        for j in range(d):
            c = x[r, j] - mean
            squares += c * c
        inv = 1.0 / math.sqrt(squares / d + eps)
        rstd[r, 0] = inv
        for j in range(d):
            h = (x[r, j] - mean) * inv
            xhat[r, j] = h
            out[r, j] = h * weight[j] + bias[j]


def layer_norm_forward(x2, weight, bias, eps: float):
    """``reference.layer_norm_forward``: two passes per row (mean, then variance and output)."""
    if not _rows_ok(x2) or any(p is not None and (p.dtype != x2.dtype or p.ndim != 1)
                               for p in (weight, bias)):
        return reference.layer_norm_forward(x2, weight, bias, eps)
    d = x2.shape[1]
    w = np.ones(d, dtype=x2.dtype) if weight is None else np.ascontiguousarray(weight)
    b = np.zeros(d, dtype=x2.dtype) if bias is None else np.ascontiguousarray(bias)
    out = np.empty_like(x2)
    xhat = np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), dtype=x2.dtype)
    _for_rows(x2, lambda start, stop: _layer_norm_rows(x2, w, b, eps, out, xhat, rstd, start,
                                                       stop))
    return out, xhat, rstd


@compiled
def _layer_norm_backward_rows(grad, xhat, rstd, weight, out, start, stop):
    d = grad.shape[1]
    for k in range(start, stop):
        r = np.uint64(k)  # unsigned: no wrap-around test, so the loops vectorise
        sum_gh = 0.0
        sum_ghx = 0.0
        for j in range(d):
            gh = grad[r, j] * weight[j]
            sum_gh += gh
            sum_ghx += gh * xhat[r, j]
        mean_gh = sum_gh / d
        mean_ghx = sum_ghx / d
        inv = rstd[r, 0]
        for j in range(d):
            out[r, j] = (grad[r, j] * weight[j] - mean_gh - xhat[r, j] * mean_ghx) * inv


def layer_norm_backward_input(grad2, xhat, rstd, weight):
    """``reference.layer_norm_backward_input``: two passes per row."""
    if (not _rows_ok(grad2, xhat) or rstd.dtype != grad2.dtype
            or (weight is not None and (weight.dtype != grad2.dtype or weight.ndim != 1))):
        return reference.layer_norm_backward_input(grad2, xhat, rstd, weight)
    w = (np.ones(grad2.shape[1], dtype=grad2.dtype) if weight is None
         else np.ascontiguousarray(weight))
    r = np.ascontiguousarray(rstd)
    out = np.empty_like(grad2)
    _for_rows(grad2, lambda start, stop: _layer_norm_backward_rows(grad2, xhat, r, w, out,
                                                                   start, stop))
    return out


@compiled
def _softmax_rows_float32(x, out, start, stop):
    c = x.shape[1]
    for k in range(start, stop):
        r = np.uint64(k)  # unsigned: no wrap-around test, so the loops vectorise
        top = x[r, 0]
        for j in range(1, c):
            top = x[r, j] if x[r, j] > top else top
        if top != top:  # NaN first (NaN never compares greater): the row is NaN anyway
            top = np.float32(0.0)
        total = np.float32(0.0)
        for j in range(c):
            e = exp_nonpositive_float32(x[r, j] - top)
            out[r, j] = e
            total += e
        scale = np.float32(1.0) / total
        for j in range(c):
            out[r, j] *= scale


def softmax_forward(x2):
    """``reference.softmax_forward`` of rows: float32, three passes per row."""
    if not _rows_ok(x2, dtypes=(np.float32,)):
        return reference.softmax_forward(x2)
    out = np.empty_like(x2)
    _for_rows(x2, lambda start, stop: _softmax_rows_float32(x2, out, start, stop))
    return out


@compiled
def _softmax_backward_rows_float32(grad, y, out, start, stop):
    c = grad.shape[1]
    for k in range(start, stop):
        r = np.uint64(k)  # unsigned: no wrap-around test, so the loops vectorise
        dot = np.float32(0.0)
        for j in range(c):
            dot += grad[r, j] * y[r, j]
        for j in range(c):
            out[r, j] = (grad[r, j] - dot) * y[r, j]


def softmax_backward(grad2, y2):
    """``reference.softmax_backward`` of rows: float32, two passes per row."""
    if not _rows_ok(grad2, y2, dtypes=(np.float32,)):
        return reference.softmax_backward(grad2, y2)
    out = np.empty_like(grad2)
    _for_rows(grad2, lambda start, stop: _softmax_backward_rows_float32(grad2, y2, out, start,
                                                                        stop))
    return out


@compiled
def _softmax_nll_rows_float32(x, target, prob, nll, start, stop):
    c = x.shape[1]
    for k in range(start, stop):
        r = np.uint64(k)  # unsigned: no wrap-around test, so the loops vectorise
        top = x[r, 0]
        for j in range(1, c):
            top = x[r, j] if x[r, j] > top else top
        if top != top:
            top = np.float32(0.0)
        total = np.float32(0.0)
        for j in range(c):
            e = exp_nonpositive_float32(x[r, j] - top)
            prob[r, j] = e
            total += e
        scale = np.float32(1.0) / total
        for j in range(c):
            prob[r, j] *= scale
        nll[r] = np.float32(math.log(total)) - (x[r, target[r]] - top)


def softmax_nll(x2, target):
    """``reference.softmax_nll``: float32 rows, three passes per row (``target`` valid class
    indices, as the reference requires)."""
    if not _rows_ok(x2, dtypes=(np.float32,)) or target.ndim != 1 or target.dtype.kind != "i":
        return reference.softmax_nll(x2, target)
    prob = np.empty_like(x2)
    nll = np.empty(x2.shape[0], dtype=x2.dtype)
    t = np.ascontiguousarray(target, dtype=np.int64)
    _for_rows(x2, lambda start, stop: _softmax_nll_rows_float32(x2, t, prob, nll, start, stop))
    return prob, nll
