"""Gradient clipping, in place on ``.grad``, with torch's formulas."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ddp.backend import get_array_module
from ddp.tensor import Tensor


def _grads(parameters) -> list:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad.array for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> Tensor:
    """Scale all gradients together so that their joint ``norm_type`` norm is at most ``max_norm``.

    The scale is ``max_norm / (total_norm + 1e-6)``, applied only when it is below 1.

    Returns:
        The total norm of the gradients before clipping, as a 0-d tensor.

    Raises:
        RuntimeError: the norm is nan or inf and ``error_if_nonfinite`` is set.
    """
    grads = _grads(parameters)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not grads:
        import numpy as np

        return Tensor(np.asarray(0.0, dtype=np.float32))
    xp = get_array_module(grads[0])
    dtype = grads[0].dtype
    if norm_type == math.inf:
        norms = [xp.abs(g).max() if g.size else xp.zeros((), dtype) for g in grads]
        total = xp.max(xp.stack([xp.asarray(n, dtype=dtype) for n in norms]))
    else:
        if norm_type == 2.0:
            parts = [xp.vdot(g.ravel(), g.ravel()).real for g in grads]
            total = xp.sqrt(xp.sum(xp.asarray(parts, dtype=dtype)))
        else:
            parts = [(xp.abs(g) ** norm_type).sum() for g in grads]
            total = xp.sum(xp.asarray(parts, dtype=dtype)) ** (1.0 / norm_type)
    total = xp.asarray(total, dtype=dtype)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            f"non-finite, so it cannot be clipped. To disable this error and scale the "
            f"gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return Tensor(total)


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float,
                     foreach=None) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        get_array_module(g).clip(g, -clip_value, clip_value, out=g)
