"""NumPy reference implementations of the fused kernels (the CPU path, and the GPU tests' oracle).

Each function does the same arithmetic, in the same order, as its CUDA kernel in
``ddp.kernels.cuda``; all work on any array module (``xp``) so the GPU tests can run the
reference on CuPy arrays too.
"""

from __future__ import annotations

import math

from ddp.backend import get_array_module

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_C = 0.044715


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


def column_sums(x2):
    """Sums over the rows of a 2-D ``x2`` (a bias gradient): shape ``(x2.shape[1],)``."""
    return x2.sum(axis=0)


def gelu_forward(x, approximate: str):
    """``(y, saved)``: GELU of ``x`` and what backward needs (Phi(x), or tanh(inner))."""
    xp = get_array_module(x)
    if approximate == "tanh":
        t = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x))
        return 0.5 * x * (1.0 + t), t
    from ddp.nn._functions.erf import erf

    cdf = erf(x * SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5
    return x * cdf, cdf


def gelu_backward(grad, x, saved, approximate: str):
    """d GELU / dx times ``grad``, from ``gelu_forward``'s ``saved``."""
    xp = get_array_module(x)
    if approximate == "tanh":
        t = saved
        dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
        return grad * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)
    pdf = xp.exp(-0.5 * x * x)
    pdf *= x
    pdf *= INV_SQRT_2PI
    pdf += saved
    pdf *= grad
    return pdf


def layer_norm_forward(x2, weight, bias, eps: float):
    """Rows of ``x2`` (M, D) normalised: ``(out, xhat, rstd)`` with rstd of shape (M, 1)."""
    xp = get_array_module(x2)
    mean = x2.mean(axis=1, keepdims=True)
    xhat = x2 - mean
    var = (xhat * xhat).mean(axis=1, keepdims=True)
    var += eps
    rstd = 1.0 / xp.sqrt(var)
    xhat *= rstd
    out = xhat * weight if weight is not None else xhat.copy()
    if bias is not None:
        out += bias
    return out, xhat, rstd


def layer_norm_backward_input(grad2, xhat, rstd, weight):
    """Gradient w.r.t. the (M, D) input: ``rstd * (gh - mean(gh) - xhat * mean(gh * xhat))``."""
    gh = grad2 * weight if weight is not None else grad2.copy()
    mean_gh = gh.mean(axis=1, keepdims=True)
    mean_ghx = (gh * xhat).mean(axis=1, keepdims=True)
    gh -= mean_gh
    gh -= xhat * mean_ghx
    gh *= rstd
    return gh


def softmax_forward(x2):
    """Row softmax of a 2-D ``x2``."""
    xp = get_array_module(x2)
    e = x2 - x2.max(axis=1, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def softmax_backward(grad2, y2):
    """Input gradient of the row softmax ``y2``: ``y * (grad - sum(grad * y))`` per row."""
    dot = (grad2 * y2).sum(axis=1, keepdims=True)
    gx = grad2 - dot
    gx *= y2
    return gx


def softmax_nll(x2, target):
    """Row softmax of ``x2`` (M, C) and ``logsumexp(row) - row[target]`` per row: ``(p, nll)``.

    ``target`` holds valid class indices (callers replace ignored ones by 0 and mask).
    """
    xp = get_array_module(x2)
    shifted = x2 - x2.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    lse = xp.log(s)[:, 0]
    nll = lse - shifted[xp.arange(x2.shape[0]), target]
    e /= s
    return e, nll
