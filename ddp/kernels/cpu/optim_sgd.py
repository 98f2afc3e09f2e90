"""Compiled SGD step: torch's formulas (weight decay, momentum, dampening, Nesterov, maximize)
in one pass over each tensor's parameter, gradient and momentum buffer."""

from __future__ import annotations

import numpy as np

from ddp.kernels import reference
from ddp.kernels.cpu._flat import flat_or_none
from ddp.kernels.jit import compiled
from ddp.kernels.parallel import for_ranges


@compiled
def _sgd_range(param, grad, buf, lr, weight_decay, momentum, keep, nesterov, sign, first,
               start, stop):
    """``[start, stop)`` of one SGD step in place on ``param`` (and ``buf`` when ``momentum``
    is not 0; ``first``: the buffer starts as this step's gradient; ``keep = 1 - dampening``;
    ``sign`` -1 to maximize, else 1). The scalars come in the arrays' dtype, so a float32 step
    computes in float32 as torch's. One loop per case, each simple enough to vectorise."""
    decay = weight_decay != 0
    if momentum == 0:
        for i in range(start, stop):
            p = param[i]
            g = sign * grad[i]
            if decay:
                g = g + weight_decay * p
            param[i] = p - lr * g
    elif first:
        for i in range(start, stop):
            p = param[i]
            g = sign * grad[i]
            if decay:
                g = g + weight_decay * p
            buf[i] = g
            param[i] = p - lr * (g + momentum * g if nesterov else g)
    elif nesterov:
        for i in range(start, stop):
            p = param[i]
            g = sign * grad[i]
            if decay:
                g = g + weight_decay * p
            b = momentum * buf[i] + keep * g
            buf[i] = b
            param[i] = p - lr * (g + momentum * b)
    else:
        for i in range(start, stop):
            p = param[i]
            g = sign * grad[i]
            if decay:
                g = g + weight_decay * p
            b = momentum * buf[i] + keep * g
            buf[i] = b
            param[i] = p - lr * b


def sgd_update_multi(params, grads, momentum_buffers, *, lr: float, weight_decay: float,
                     momentum: float, dampening: float, nesterov: bool, maximize: bool) -> None:
    """``reference.sgd_update_multi``: one compiled pass per tensor (split over the rank's
    threads for large ones); tensors it cannot walk (strided, mixed dtypes) take the
    reference."""
    hyper = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
             "dampening": dampening, "nesterov": nesterov, "maximize": maximize}
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        buf = momentum_buffers[i] if momentum != 0 else None
        first = momentum != 0 and buf is None
        if first:
            buf = np.empty_like(param)
        p, g = flat_or_none(param), flat_or_none(grad)
        b = flat_or_none(buf) if buf is not None else np.empty(0, dtype=param.dtype)
        if p is None or g is None or b is None or g.dtype != p.dtype or b.dtype != p.dtype \
                or p.dtype not in (np.float32, np.float64):
            one = [None if first else buf] if momentum != 0 else []
            reference.sgd_update_multi([param], [grad], one, **hyper)
            if momentum != 0:
                momentum_buffers[i] = one[0]
            continue
        _step(p, g, b, first, **hyper)
        if first:
            momentum_buffers[i] = buf


def _step(p, g, b, first: bool, *, lr, weight_decay, momentum, dampening, nesterov,
          maximize) -> None:
    """One tensor's step on flat arrays of one dtype, over the rank's threads."""
    t = p.dtype.type
    scalars = (t(lr), t(weight_decay), t(momentum), t(1 - dampening), nesterov,
               t(-1 if maximize else 1), first)
    for_ranges(p.size, lambda start, stop: _sgd_range(p, g, b, *scalars, start, stop))
