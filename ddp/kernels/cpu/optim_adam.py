"""Compiled Adam/AdamW: one pass per tensor over parameter, gradient and both moments.

The reference makes about ten NumPy passes (and a scratch array) per tensor; here each element
is read and written once, with torch's formulas in the reference's order, the arithmetic in
float64 and the results rounded to the tensors' dtype. amsgrad stays on the reference
(``ddp.kernels.adam_update`` sends it there).
"""

from __future__ import annotations

import math

import numpy as np

from ddp.kernels import reference
from ddp.kernels.cpu._flat import flat_or_none
from ddp.kernels.jit import compiled
from ddp.kernels.parallel import for_ranges


@compiled
def _adam_range(param, grad, exp_avg, exp_avg_sq, sign, decay, l2, one_minus_beta1, beta2,
                one_minus_beta2, inv_bias_correction2_sqrt, eps, step_size, start, stop):
    """``sign`` is -1 with ``maximize``; ``decay`` multiplies the parameter (decoupled weight
    decay, else 1); ``l2`` is the coupled weight decay added to the gradient (else 0)."""
    for k in range(start, stop):
        # An unsigned index: numba then emits no negative-index wrap-around, without which
        # LLVM cannot vectorise a loop that writes back the elements it reads.
        i = np.uint64(k)
        p = param[i] * decay
        g = sign * grad[i] + l2 * param[i]
        m = exp_avg[i] + (g - exp_avg[i]) * one_minus_beta1
        v = exp_avg_sq[i] * beta2 + (g * one_minus_beta2) * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = p - step_size * (m / (math.sqrt(v) * inv_bias_correction2_sqrt + eps))


def _flats(arrays):
    return [flat_or_none(a) for a in arrays]


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step: float, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool,
                maximize: bool, max_exp_avg_sq=None) -> None:
    """``reference.adam_update`` in one compiled pass (contiguous tensors of one dtype)."""
    flats = _flats((param, grad, exp_avg, exp_avg_sq))
    if (max_exp_avg_sq is not None or any(f is None or f.dtype != param.dtype for f in flats)
            or param.dtype not in (np.float32, np.float64)):
        reference.adam_update(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1,
                              beta2=beta2, eps=eps, weight_decay=weight_decay,
                              decoupled=decoupled, maximize=maximize,
                              max_exp_avg_sq=max_exp_avg_sq)
        return
    p, g, m, v = flats
    decay = 1.0 - lr * weight_decay if weight_decay != 0 and decoupled else 1.0
    l2 = weight_decay if weight_decay != 0 and not decoupled else 0.0
    sign = -1.0 if maximize else 1.0
    step_size = lr / (1.0 - beta1**step)
    inv_bc2 = 1.0 / (1.0 - beta2**step) ** 0.5
    for_ranges(p.size, lambda start, stop: _adam_range(
        p, g, m, v, sign, decay, l2, 1.0 - beta1, beta2, 1.0 - beta2, inv_bc2, eps, step_size,
        start, stop))


def adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, **hyper) -> None:
    """``adam_update`` over lists of tensors sharing hyperparameters (and ``step``)."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        adam_update(p, g, m, v, **hyper)
