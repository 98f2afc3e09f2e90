"""Compiled batch-normalisation kernels: per-channel statistics, normalisation and backward.

Arrays are ``(N, C, L)`` and C-contiguous: channel ``c`` is N runs of L elements. A kernel walks
a range of channels, so the rank's threads take disjoint channels, and does every pass a channel
needs while its N*L elements are in cache (at the ResNet's shapes a channel is at most 64 KB):
the mean, then the squared deviations (a two-pass variance, float64 accumulators), then the
normalised values; backward the two sums, then the input gradient. Per-channel vectors (mean,
invstd, weight, bias, the sums) are float64 and of C elements.
"""

from __future__ import annotations

import numpy as np

from ddp.kernels import reference
from ddp.kernels.jit import compiled
from ddp.kernels.parallel import MIN_PER_THREAD, for_ranges

STATS, APPLY, STATS_AND_APPLY = 1, 2, 3  # what _forward_channels does
SUMS, INPUT_GRAD, SUMS_AND_INPUT_GRAD = 1, 2, 3  # what _backward_channels does


@compiled
def _forward_channels(x, mean, m2, invstd, weight, bias, xhat, out, eps, mode, c0, c1):
    """Channels ``[c0, c1)`` of ``x`` (N, C, L): with ``mode & STATS`` fill ``mean`` and ``m2``
    (sum of squared deviations) and ``invstd = 1/sqrt(m2/count + eps)``; with ``mode & APPLY``
    write ``xhat = (x - mean) * invstd`` and ``out = xhat * weight + bias`` from ``mean`` and
    ``invstd`` (given, or just computed)."""
    n, _, length = x.shape
    count = n * length
    for c in range(c0, c1):
        if mode & 1:
            s = 0.0
            for i in range(n):
                for j in range(length):
                    s += np.float64(x[i, c, j])
            mu = s / count
            q = 0.0
            for i in range(n):
                for j in range(length):
                    d = np.float64(x[i, c, j]) - mu
                    q += d * d
            mean[c] = mu
            m2[c] = q
            invstd[c] = 1.0 / np.sqrt(q / count + eps)
        if mode & 2:
            mu, r, w, b = mean[c], invstd[c], weight[c], bias[c]
            for i in range(n):
                for j in range(length):
                    h = (np.float64(x[i, c, j]) - mu) * r
                    xhat[i, c, j] = h
                    out[i, c, j] = h * w + b


@compiled
def _backward_channels(g, xhat, sum_dy, sum_dy_xhat, scale, mean_dy, mean_dy_xhat, gx, mode,
                       c0, c1):
    """Channels ``[c0, c1)``: with ``mode & SUMS`` fill ``sum_dy`` and ``sum_dy_xhat`` (the sums
    of ``g`` and ``g * xhat``; ``mean_dy``/``mean_dy_xhat`` become them over the count); with
    ``mode & INPUT_GRAD`` write ``gx = scale * (g - mean_dy - xhat * mean_dy_xhat)``."""
    n, _, length = g.shape
    count = n * length
    for c in range(c0, c1):
        if mode & 1:
            s = 0.0
            t = 0.0
            for i in range(n):
                for j in range(length):
                    gv = np.float64(g[i, c, j])
                    s += gv
                    t += gv * np.float64(xhat[i, c, j])
            sum_dy[c] = s
            sum_dy_xhat[c] = t
            mean_dy[c] = s / count
            mean_dy_xhat[c] = t / count
        if mode & 2:
            k, md, mh = scale[c], mean_dy[c], mean_dy_xhat[c]
            for i in range(n):
                for j in range(length):
                    gx[i, c, j] = k * (np.float64(g[i, c, j]) - md
                                       - np.float64(xhat[i, c, j]) * mh)


def _over_channels(x3, kernel) -> None:
    """``kernel(c0, c1)`` over the channels of ``x3``, split over the rank's threads."""
    per_channel = max(1, x3.shape[0] * x3.shape[2])
    for_ranges(x3.shape[1], kernel, min_per_thread=max(1, MIN_PER_THREAD // per_channel))


def _vector(values, c: int, fill: float):
    """A float64 per-channel vector: ``values`` (a NumPy array or None: ``fill``)."""
    if values is None:
        return np.full(c, fill)
    return np.ascontiguousarray(values, dtype=np.float64).reshape(c)


def _walkable(*arrays) -> bool:
    return all(a.flags.c_contiguous and a.ndim == 3 for a in arrays)


def batch_norm_stats(x3):
    """``reference.batch_norm_stats``: ``(mean, m2)`` per channel, float64, one pass per
    channel in cache (float64 accumulators)."""
    if not _walkable(x3) or x3.shape[0] * x3.shape[2] == 0:
        return reference.batch_norm_stats(x3)
    c = x3.shape[1]
    mean, m2, invstd, unused = np.empty(c), np.empty(c), np.empty(c), np.empty(0)
    none3 = np.empty((0, 0, 0), dtype=x3.dtype)
    _over_channels(x3, lambda c0, c1: _forward_channels(
        x3, mean, m2, invstd, unused, unused, none3, none3, 0.0, STATS, c0, c1))
    return mean, m2


def batch_norm_train_forward(x3, weight, bias, eps: float):
    """``reference.batch_norm_train_forward``: statistics and normalisation of each channel in
    one visit of its elements."""
    if not _walkable(x3) or x3.shape[0] * x3.shape[2] == 0:
        return reference.batch_norm_train_forward(x3, weight, bias, eps)
    c = x3.shape[1]
    mean, m2, invstd = np.empty(c), np.empty(c), np.empty(c)
    w, b = _vector(weight, c, 1.0), _vector(bias, c, 0.0)
    xhat, out = np.empty_like(x3), np.empty_like(x3)
    _over_channels(x3, lambda c0, c1: _forward_channels(
        x3, mean, m2, invstd, w, b, xhat, out, eps, STATS_AND_APPLY, c0, c1))
    return out, xhat, mean, m2, invstd.astype(x3.dtype)


def batch_norm_apply(x3, mean, invstd, weight, bias):
    """``reference.batch_norm_apply``: ``(out, xhat)`` in one pass."""
    if not _walkable(x3):
        return reference.batch_norm_apply(x3, mean, invstd, weight, bias)
    c = x3.shape[1]
    m, r = _vector(mean, c, 0.0), _vector(invstd, c, 1.0)
    w, b = _vector(weight, c, 1.0), _vector(bias, c, 0.0)
    xhat, out = np.empty_like(x3), np.empty_like(x3)
    unused = np.empty(0)
    _over_channels(x3, lambda c0, c1: _forward_channels(
        x3, m, unused, r, w, b, xhat, out, 0.0, APPLY, c0, c1))
    return out, xhat


def batch_norm_grad_sums(g3, xhat):
    """``reference.batch_norm_grad_sums``: ``(sum(g), sum(g * xhat))`` per channel, float64."""
    g3 = np.ascontiguousarray(g3, dtype=xhat.dtype)
    if not _walkable(g3, xhat):
        return reference.batch_norm_grad_sums(g3, xhat)
    c = g3.shape[1]
    sums, sums_h, mean_dy, mean_dy_xhat = (np.empty(c) for _ in range(4))
    unused, none3 = np.empty(0), np.empty((0, 0, 0), dtype=g3.dtype)
    _over_channels(g3, lambda c0, c1: _backward_channels(
        g3, xhat, sums, sums_h, unused, mean_dy, mean_dy_xhat, none3, SUMS, c0, c1))
    return sums, sums_h


def batch_norm_grad_input(g3, xhat, scale, mean_dy, mean_dy_xhat):
    """``reference.batch_norm_grad_input``: the input gradient in one pass."""
    g3 = np.ascontiguousarray(g3, dtype=xhat.dtype)
    if not _walkable(g3, xhat):
        return reference.batch_norm_grad_input(g3, xhat, scale, mean_dy, mean_dy_xhat)
    c = g3.shape[1]
    k = _vector(scale, c, 1.0)
    md, mh = _vector(mean_dy, c, 0.0), _vector(mean_dy_xhat, c, 0.0)
    gx = np.empty_like(g3)
    unused = np.empty(0)
    _over_channels(g3, lambda c0, c1: _backward_channels(
        g3, xhat, unused, unused, k, md, mh, gx, INPUT_GRAD, c0, c1))
    return gx


def batch_norm_backward(g3, xhat, scale, need_input: bool):
    """``reference.batch_norm_backward``: the sums and the input gradient of each channel in
    one visit of its elements."""
    g3 = np.ascontiguousarray(g3, dtype=xhat.dtype)
    if not _walkable(g3, xhat):
        return reference.batch_norm_backward(g3, xhat, scale, need_input)
    c = g3.shape[1]
    sums, sums_h, mean_dy, mean_dy_xhat = (np.empty(c) for _ in range(4))
    k = _vector(scale, c, 1.0)
    gx = np.empty_like(g3) if need_input else np.empty((0, 0, 0), dtype=g3.dtype)
    mode = SUMS_AND_INPUT_GRAD if need_input else SUMS
    _over_channels(g3, lambda c0, c1: _backward_channels(
        g3, xhat, sums, sums_h, k, mean_dy, mean_dy_xhat, gx, mode, c0, c1))
    return (gx if need_input else None), sums, sums_h
