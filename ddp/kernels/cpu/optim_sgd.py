"""Compiled SGD step: torch's formulas (weight decay, momentum, dampening, Nesterov, maximize)
in one pass over each tensor's parameter, gradient and momentum buffer."""

from __future__ import annotations

import numpy as np

from ddp.kernels import reference
from ddp.kernels.cpu._flat import flat_or_none
from ddp.kernels.jit import compiled
from ddp.kernels.parallel import for_ranges


@compiled
def _sgd_range(param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, maximize,
               first, start, stop):
    """``[start, stop)`` of one SGD step in place on ``param`` (and ``buf`` when ``momentum``
    is not 0; ``first``: the buffer starts as this step's gradient). Arithmetic in float64,
    rounded once to the arrays' dtype."""
    keep = 1.0 - dampening
    for i in range(start, stop):
        p = np.float64(param[i])
        g = np.float64(grad[i])
        if maximize:
            g = -g
        if weight_decay != 0.0:
            g = g + weight_decay * p
        if momentum != 0.0:
            b = g if first else momentum * np.float64(buf[i]) + keep * g
            buf[i] = b
            b = np.float64(buf[i])  # the stored value, as torch's next step reads it
            g = g + momentum * b if nesterov else b
        param[i] = p - lr * g


def sgd_update_multi(params, grads, momentum_buffers, *, lr: float, weight_decay: float,
                     momentum: float, dampening: float, nesterov: bool, maximize: bool) -> None:
    """``reference.sgd_update_multi``: one compiled pass per tensor (split over the rank's
    threads for large ones); tensors it cannot walk (strided, mixed dtypes) take the
    reference."""
    hyper = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
             "dampening": dampening, "nesterov": nesterov, "maximize": maximize}
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        buf = momentum_buffers[i] if momentum != 0 else None
        p, g = flat_or_none(param), flat_or_none(grad)
        first = momentum != 0 and buf is None
        if first:
            buf = np.empty_like(param)
        b = flat_or_none(buf) if buf is not None else np.empty(0, dtype=param.dtype)
        if p is None or g is None or b is None or g.dtype != p.dtype or b.dtype != p.dtype \
                or p.dtype not in (np.float32, np.float64):
            one = [None if first else buf] if momentum != 0 else []
            reference.sgd_update_multi([param], [grad], one, **hyper)
            if momentum != 0:
                momentum_buffers[i] = one[0]
            continue
        for_ranges(p.size, lambda start, stop, p=p, g=g, b=b, first=first: _sgd_range(
            p, g, b, lr, weight_decay, momentum, dampening, nesterov, maximize, first, start,
            stop))
        if first:
            momentum_buffers[i] = buf
