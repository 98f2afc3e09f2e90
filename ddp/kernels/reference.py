"""NumPy reference implementations of the fused kernels: the CPU path, and the GPU tests' oracle.

Each function does the same arithmetic, in the same order, as its CUDA kernel in
``ddp.kernels.cuda``; all work on any array module (``xp``) so the GPU tests can run the
reference on CuPy arrays too, and the GPU runs them where no fused kernel applies. The ops
(``ddp.ops``, ``ddp.nn._functions``) call these through ``ddp.kernels`` and hold no copy of the
formulas. On float32 NumPy arrays GELU walks the same formulas in cache-sized blocks on
``OMP_NUM_THREADS`` threads (``_gelu_float32``), with the float32 form of erf of
``ddp.kernels.erf``.
"""

from __future__ import annotations

import math

import numpy as np

from ddp.backend import get_array_module
from ddp.kernels.erf import erf, erf_float32_range, float32_work_buffers
from ddp.kernels.parallel import MIN_PER_THREAD, for_ranges

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_C = 0.044715
_BLOCK = 1 << 15  # elements per block of the float32 GELU: its work buffers stay in cache


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step: float, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool,
                maximize: bool, max_exp_avg_sq=None) -> None:
    """One Adam/AdamW step (torch's formulas), in place on ``param``, ``exp_avg``, ``exp_avg_sq``.

    ``step`` is the step count *after* incrementing (1 on the first step). ``max_exp_avg_sq``
    (amsgrad) keeps the running maximum of ``exp_avg_sq`` and takes its place in the denominator.
    This is the one CPU implementation: ``ddp.optim`` calls it for every NumPy parameter.
    """
    xp = get_array_module(param)
    if maximize:
        grad = xp.negative(grad)
    if weight_decay != 0 and decoupled:
        param *= 1.0 - lr * weight_decay
    elif weight_decay != 0:
        grad = grad + param * weight_decay
    scratch = xp.subtract(grad, exp_avg)
    scratch *= 1.0 - beta1
    exp_avg += scratch
    exp_avg_sq *= beta2
    xp.multiply(grad, 1.0 - beta2, out=scratch)
    scratch *= grad
    exp_avg_sq += scratch
    step_size = lr / (1.0 - beta1**step)
    bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    denom = xp.sqrt(second, out=scratch)
    denom /= bias_correction2_sqrt
    denom += eps
    update = xp.divide(exp_avg, denom, out=scratch)
    update *= step_size
    param -= update


def adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, **hyper) -> None:
    """``adam_update`` over lists of tensors sharing hyperparameters (and ``step``)."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        adam_update(p, g, m, v, **hyper)


def sgd_update_multi(params, grads, momentum_buffers, *, lr: float, weight_decay: float,
                     momentum: float, dampening: float, nesterov: bool, maximize: bool) -> None:
    """One SGD step (torch's formulas) in place on each of ``params``.

    ``momentum_buffers[i]`` is None before the first step with momentum: it becomes a copy of
    this step's gradient; afterwards it is updated in place. With ``momentum == 0`` the list is
    neither read nor changed (it may be empty). A step allocates at most the scratch arrays
    that weight decay, dampening and Nesterov need. This is the one CPU implementation:
    ``ddp.optim`` calls it for every NumPy parameter (one loop, no call per tensor).
    """
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        xp = get_array_module(param)
        owned = False  # whether ``grad`` is a scratch array this step may overwrite
        if maximize:
            grad = xp.negative(grad)
            owned = True
        if weight_decay != 0:
            decayed = xp.multiply(param, weight_decay)
            decayed += grad
            grad, owned = decayed, True
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = grad if owned else grad.copy()
                owned = False
                momentum_buffers[i] = buf
            else:
                buf *= momentum
                if dampening == 0:
                    buf += grad
                else:
                    scaled = xp.multiply(grad, 1.0 - dampening)
                    buf += scaled
            if nesterov:
                ahead = xp.multiply(buf, momentum)
                if owned:
                    grad += ahead
                else:
                    ahead += grad
                    grad, owned = ahead, True
            else:
                grad, owned = buf, False
        if owned:
            grad *= lr
            param -= grad
        else:
            param -= xp.multiply(grad, lr)


def column_sums(x2):
    """Sums over the rows of a 2-D ``x2`` (a bias gradient): shape ``(x2.shape[1],)``."""
    return x2.sum(axis=0)


def gelu_forward(x, approximate: str):
    """``(y, saved)``: GELU of ``x`` and what backward needs (Phi(x), or tanh(inner)).

    ``approximate`` "none": ``y = x * Phi(x)``, Phi the standard normal CDF; "tanh":
    ``y = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))``.
    """
    xp = get_array_module(x)
    if approximate == "tanh":
        t = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x))
        return 0.5 * x * (1.0 + t), t
    if type(x) is np.ndarray and x.dtype == np.float32:
        return _gelu_float32(x)
    cdf = erf(x * SQRT_HALF)
    return _gelu_from_erf(x, cdf), cdf


def _gelu_from_erf(x, cdf, out=None):
    """``x * Phi(x)``, turning ``cdf`` = erf(x / sqrt(2)) into Phi(x) in place on the way."""
    cdf += 1.0
    cdf *= 0.5
    return get_array_module(x).multiply(x, cdf, out=out)


def _gelu_float32(x):
    """``gelu_forward`` of a float32 NumPy array: cache-sized blocks, on all threads."""
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    cdf = np.empty(flat.shape, dtype=np.float32)

    def kernel(begin, end):
        buffers = float32_work_buffers(min(_BLOCK, end - begin))
        for start in range(begin, end, _BLOCK):
            stop = min(start + _BLOCK, end)
            erf_float32_range(flat, cdf, start, stop, SQRT_HALF, buffers)
            _gelu_from_erf(flat[start:stop], cdf[start:stop], out=out[start:stop])

    for_ranges(flat.size, kernel)
    return out.reshape(x.shape), cdf.reshape(x.shape)


def gelu_backward(grad, x, saved, approximate: str):
    """d GELU / dx times ``grad``, from ``gelu_forward``'s ``saved``; in ``x``'s dtype."""
    xp = get_array_module(x)
    if approximate == "tanh":
        t = saved
        dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
        return grad * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)
    if type(x) is np.ndarray and x.dtype == np.float32 and grad.dtype == np.float32:
        return _gelu_backward_float32(grad, x, saved)
    return _gelu_grad(grad, x, saved, xp.empty(x.shape, dtype=x.dtype))


def _gelu_grad(grad, x, cdf, out):
    """``out = grad * (Phi(x) + x * phi(x))``, phi the standard normal density: d/dx x Phi(x)."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=out)
    out *= -0.5
    xp.exp(out, out=out)
    out *= x
    out *= INV_SQRT_2PI
    out += cdf
    out *= grad
    return out


def _gelu_backward_float32(grad, x, cdf):
    """``gelu_backward`` of float32 NumPy arrays: cache-sized blocks, on all threads."""
    g, flat, c = (np.ascontiguousarray(a).reshape(-1) for a in (grad, x, cdf))
    out = np.empty(flat.shape, dtype=np.float32)

    def kernel(begin, end):
        for start in range(begin, end, _BLOCK):
            stop = min(start + _BLOCK, end)
            _gelu_grad(g[start:stop], flat[start:stop], c[start:stop], out[start:stop])

    for_ranges(flat.size, kernel)
    return out.reshape(grad.shape)


def _row_blocks(x2, kernel) -> None:
    """Run ``kernel(start, stop)`` over the rows of a 2-D ``x2``: split over the rank's threads
    for a large NumPy array (rows are independent, so the result is the same), else inline."""
    if type(x2) is np.ndarray and x2.ndim == 2 and x2.shape[1]:
        for_ranges(x2.shape[0], kernel, min_per_thread=max(1, MIN_PER_THREAD // x2.shape[1]))
    else:
        kernel(0, x2.shape[0])


def layer_norm_forward(x2, weight, bias, eps: float):
    """Rows of ``x2`` (M, D) normalised: ``(out, xhat, rstd)`` with rstd of shape (M, 1)."""
    xp = get_array_module(x2)
    xhat = xp.empty(x2.shape, dtype=x2.dtype)
    out = xp.empty(x2.shape, dtype=x2.dtype)
    rstd = xp.empty((x2.shape[0], 1), dtype=x2.dtype)

    def rows(start, stop):
        x, h, r = x2[start:stop], xhat[start:stop], rstd[start:stop]
        xp.subtract(x, x.mean(axis=1, keepdims=True), out=h)
        y = out[start:stop]
        xp.multiply(h, h, out=y)  # out's rows as scratch for the squares
        var = y.mean(axis=1, keepdims=True)
        var += eps
        xp.sqrt(var, out=var)
        xp.divide(1.0, var, out=r)
        h *= r
        if weight is not None:
            xp.multiply(h, weight, out=y)
        else:
            y[...] = h
        if bias is not None:
            y += bias

    _row_blocks(x2, rows)
    return out, xhat, rstd


def layer_norm_backward_input(grad2, xhat, rstd, weight):
    """Gradient w.r.t. the (M, D) input: ``rstd * (gh - mean(gh) - xhat * mean(gh * xhat))``."""
    xp = get_array_module(grad2)
    gh = xp.empty(grad2.shape, dtype=np.result_type(grad2, xhat))

    def rows(start, stop):
        g, h, x = grad2[start:stop], gh[start:stop], xhat[start:stop]
        if weight is not None:
            xp.multiply(g, weight, out=h)
        else:
            h[...] = g
        mean_gh = h.mean(axis=1, keepdims=True)
        mean_ghx = (h * x).mean(axis=1, keepdims=True)
        h -= mean_gh
        h -= x * mean_ghx
        h *= rstd[start:stop]

    _row_blocks(grad2, rows)
    return gh


def softmax_forward(x, axis: int = -1):
    """Softmax of ``x`` along ``axis`` (the fused kernel: rows of a 2-D ``x``)."""
    xp = get_array_module(x)
    e = xp.empty(x.shape, dtype=x.dtype)

    def rows(start, stop):
        a, y = x[start:stop], e[start:stop]
        xp.subtract(a, a.max(axis=axis, keepdims=True), out=y)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)

    if x.ndim == 2 and axis in (-1, 1):
        _row_blocks(x, rows)
    else:
        rows(None, None)
    return e


def softmax_backward(grad, y, axis: int = -1):
    """Input gradient of the softmax ``y`` along ``axis``: ``y * (grad - sum(grad * y))``."""
    xp = get_array_module(grad)
    gx = xp.empty(grad.shape, dtype=np.result_type(grad, y))

    def rows(start, stop):
        g, p, out = grad[start:stop], y[start:stop], gx[start:stop]
        xp.multiply(g, p, out=out)
        dot = out.sum(axis=axis, keepdims=True)
        xp.subtract(g, dot, out=out)
        out *= p

    if grad.ndim == 2 and axis in (-1, 1):
        _row_blocks(grad, rows)
    else:
        rows(None, None)
    return gx


def softmax_nll(x2, target, return_logits: bool = False):
    """Row softmax of ``x2`` (M, C) and ``logsumexp(row) - row[target]`` per row: ``(p, nll)``.

    ``target`` holds valid class indices (callers replace ignored ones by 0 and mask).
    ``return_logits`` appends ``shifted`` (each row minus its maximum) and ``lse`` (each row's
    log-sum-exp of ``shifted``), which label smoothing needs; the fused kernel has no such form.
    """
    xp = get_array_module(x2)
    shifted = x2 - x2.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    lse = xp.log(s)[:, 0]
    nll = lse - shifted[xp.arange(x2.shape[0]), target]
    e /= s
    if return_logits:
        return e, nll, shifted, lse
    return e, nll


# ------------------------------------------------------------------------------- convolution
def conv_output_size(size, kernel, stride, padding, dilation) -> tuple[int, int]:
    """``(Ho, Wo)`` of a convolution (or pooling) window over an input of spatial ``size``."""
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation, strict=True))


def im2col(x, kernel, stride, padding, dilation, out):
    """Exact columns of an NCHW ``x`` into ``out`` of shape ``(C*kh*kw, N*Ho*Wo)``:
    ``out[(c*kh + i)*kw + j, (n*Ho + oh)*Wo + ow] = x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]``,
    ``x_pad`` being ``x`` zero-padded by ``padding`` on both sides. Returns ``out``."""
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c = x.shape[:2]
    ho, wo = conv_output_size(x.shape[2:], kernel, stride, padding, dilation)
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    view = out.reshape(c, kh, kw, n, ho, wo)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            view[:, i, j] = x[:, :, rows, cols].transpose(1, 0, 2, 3)
    return out


def col2im(cols, kernel, stride, padding, dilation, out):
    """The adjoint of :func:`im2col`: ``out`` (NCHW, overwritten) receives the sum of the
    ``(C*kh*kw, N*Ho*Wo)`` column gradient ``cols`` over the kernel offsets; gradient falling
    on the padding is dropped. Returns ``out``."""
    xp = get_array_module(cols)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = out.shape
    ho, wo = conv_output_size((h, w), kernel, stride, padding, dilation)
    view = cols.reshape(c, kh, kw, n, ho, wo)
    # Accumulate in (C, N, H, W) order so each add walks both operands in the same order.
    padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=out.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                   j * dw:j * dw + sw * (wo - 1) + 1:sw] += view[:, i, j]
    out[...] = padded[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)
    return out


# ---------------------------------------------------------------------------------------- relu
def relu_forward(x):
    """``max(x, 0)``, NaN kept (``np.maximum``)."""
    return get_array_module(x).maximum(x, 0)


def relu_backward(grad, out):
    """The input gradient of ReLU from its output: ``grad * (out > 0)``."""
    return grad * (out > 0)


def _channel_sums(a3):
    """Per-channel sums of an ``(N, C, L)`` array: contiguous inner sums first, then the batch."""
    return a3.sum(axis=2).sum(axis=0)


def batch_norm_stats(x3):
    """``(mean, m2)`` per channel of an ``(N, C, L)`` array, as float64 vectors: the mean and
    the sum of squared deviations from it (two passes); zeros when ``N * L == 0``."""
    xp = get_array_module(x3)
    count = x3.shape[0] * x3.shape[2]
    if not count:
        zeros = xp.zeros(x3.shape[1], dtype=xp.float64)
        return zeros, zeros.copy()
    mean = _channel_sums(x3) / count
    centred = x3 - mean[:, None]
    m2 = _channel_sums(centred * centred)
    return mean.astype(xp.float64), m2.astype(xp.float64)


def batch_norm_train_forward(x3, weight, bias, eps: float):
    """Training batch norm of an ``(N, C, L)`` array with ``N * L > 0`` over its own batch:
    ``(out, xhat, mean, m2, invstd)``, ``xhat = (x - mean) * invstd`` and
    ``out = xhat * weight + bias`` (None: 1 and 0) in ``x3``'s dtype, ``invstd =
    1/sqrt(m2/count + eps)`` in ``x3``'s dtype, ``mean`` and ``m2`` per channel."""
    xp = get_array_module(x3)
    count = x3.shape[0] * x3.shape[2]
    mean = _channel_sums(x3) / count
    xhat = x3 - mean[:, None]
    m2 = _channel_sums(xhat * xhat)
    invstd = (1.0 / xp.sqrt(m2 / count + eps)).astype(x3.dtype)
    xhat *= invstd[:, None]
    return (*_affine(xhat, weight, bias), mean, m2, invstd)


def _affine(xhat, weight, bias):
    """``(xhat * weight + bias, xhat)`` per channel (dim 1), a new array for the first."""
    out = xhat * weight[:, None] if weight is not None else xhat.copy()
    if bias is not None:
        out += bias[:, None]
    return out, xhat


def batch_norm_apply(x3, mean, invstd, weight, bias):
    """``(out, xhat)`` of an ``(N, C, L)`` array with the given per-channel ``mean`` and
    ``invstd`` (of ``x3``'s dtype): ``xhat = (x - mean) * invstd``, ``out = xhat * weight +
    bias``."""
    xhat = x3 - mean[:, None]
    xhat *= invstd[:, None]
    return _affine(xhat, weight, bias)


def batch_norm_grad_sums(g3, xhat):
    """``(sum(g), sum(g * xhat))`` per channel of two ``(N, C, L)`` arrays."""
    return _channel_sums(g3), _channel_sums(g3 * xhat)


def batch_norm_grad_input(g3, xhat, scale, mean_dy, mean_dy_xhat):
    """``scale * (g - mean_dy - xhat * mean_dy_xhat)`` with per-channel vectors."""
    gx = g3 - xhat * mean_dy_xhat[:, None]
    gx -= mean_dy[:, None]
    gx *= scale[:, None]
    return gx


def batch_norm_backward(g3, xhat, scale, need_input: bool):
    """Training backward of batch norm over the local batch: ``(gx, sum(g), sum(g * xhat))``,
    ``gx = scale * (g - mean(g) - xhat * mean(g * xhat))`` (None unless ``need_input``)."""
    sum_dy, sum_dy_xhat = batch_norm_grad_sums(g3, xhat)
    gx = None
    if need_input:
        count = g3.shape[0] * g3.shape[2]
        gx = batch_norm_grad_input(g3, xhat, scale, sum_dy / count, sum_dy_xhat / count)
    return gx, sum_dy, sum_dy_xhat
