"""Gradient clipping, in place on ``.grad``, with torch's formulas."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed.reduce_op import ReduceOp
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

    Sharded gradients: a parameter with a ``process_group`` attribute (a fully sharded
    parameter, ``ddp.distributed.fsdp``) holds only its shard of the gradient; the partial norms
    of such parameters are combined over that group (one all-reduce per group), so the norm is
    the global one, as torch computes it for DTensor gradients. Then this is a collective: call
    it on every rank of the group.

    Returns:
        The total norm of the gradients before clipping, as a 0-d tensor.

    Raises:
        RuntimeError: the norm is nan or inf and ``error_if_nonfinite`` is set.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    with_grad = [p for p in parameters if p.grad is not None]
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not with_grad:
        return Tensor(np.asarray(0.0, dtype=np.float32))
    grads = [p.grad.array for p in with_grad]
    xp = get_array_module(grads[0])
    dtype = grads[0].dtype
    replicated: list = []
    sharded: dict[int, tuple] = {}  # id(group) -> (group, grads)
    for p, g in zip(with_grad, grads, strict=True):
        group = getattr(p, "process_group", None)
        if group is None:
            replicated.append(g)
        else:
            sharded.setdefault(id(group), (group, []))[1].append(g)
    if norm_type == math.inf:
        total = _partial(xp, replicated, norm_type, dtype)
        for group, part in sharded.values():
            local = xp.reshape(_partial(xp, part, norm_type, dtype), (1,)).copy()
            group.allreduce(local, ReduceOp.MAX)
            total = xp.maximum(total, local[0])
    else:
        total = _partial(xp, replicated, norm_type, dtype)
        for group, part in sharded.values():
            local = xp.reshape(_partial(xp, part, norm_type, dtype), (1,)).copy()
            group.allreduce(local, ReduceOp.SUM)
            total = total + local[0]
        total = xp.sqrt(total) if norm_type == 2.0 else total ** (1.0 / norm_type)
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


def _partial(xp, grads: list, norm_type: float, dtype):
    """max |g| (``inf``), else the sum of ``|g| ** norm_type`` over ``grads`` (0-d, ``dtype``)."""
    if norm_type == math.inf:
        norms = [xp.abs(g).max() if g.size else xp.zeros((), dtype) for g in grads]
        return xp.max(xp.stack([xp.asarray(n, dtype=dtype) for n in norms])) if norms \
            else xp.zeros((), dtype)
    if norm_type == 2.0:
        parts = [xp.vdot(g.ravel(), g.ravel()).real for g in grads]
    else:
        parts = [(xp.abs(g) ** norm_type).sum() for g in grads]
    return xp.sum(xp.asarray(parts, dtype=dtype)) if parts else xp.zeros((), dtype)


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float,
                     foreach=None) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        get_array_module(g).clip(g, -clip_value, clip_value, out=g)
