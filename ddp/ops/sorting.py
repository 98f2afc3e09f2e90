"""Ordering: ``sort``, ``argsort``, ``topk``; the gradient goes back to where each value came from.

Ties keep their original order (a stable sort) in both directions, which torch promises only
with ``stable=True``; with random float inputs there are no ties, and with ties ddp's order is
one of the orders torch may return. NaN sorts as the largest value, as in torch.
"""

from __future__ import annotations

import numpy as np

from ddp.autograd import tensor_type
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import normalize_dim
from ddp.ops.reduction import ValuesIndices


def _order(a, dim: int, descending: bool):
    """Indices that sort ``a`` along ``dim``, ties in their original order."""
    xp = get_array_module(a)
    if not descending:
        return xp.argsort(a, axis=dim, kind="stable")
    # Sorting the reversed array ascending puts ties in decreasing original position; reading
    # that order backwards gives descending values with ties in increasing position. No
    # negation, so unsigned and bool inputs work, and NaN stays the largest value.
    n = a.shape[dim]
    backwards = xp.argsort(xp.flip(a, axis=dim), axis=dim, kind="stable")
    return (n - 1) - xp.flip(backwards, axis=dim)


class SortValues(Function):
    """Values picked along ``dim`` by ``indices`` (sort, topk): each index appears once."""

    def name(self) -> str:
        return self.backward_label

    @staticmethod
    def forward(ctx, a, dim, indices, label):
        ctx.shape = a.shape
        ctx.dim = dim
        ctx.backward_label = label
        ctx.save_for_backward(indices)
        return get_array_module(a).take_along_axis(a, indices, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        xp = get_array_module(grad)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        xp.put_along_axis(out, indices, grad, axis=ctx.dim)
        return out, None, None, None


def _values_indices(a, dim: int, indices, label: str) -> ValuesIndices:
    if a.ndim == 0:  # a 0-d tensor sorts to itself at index 0, as in torch
        indices = indices.reshape(())
        values = SortValues.apply(a.reshape(1), 0, indices.reshape(1), label).reshape(())
    else:
        values = SortValues.apply(a, dim, indices, label)
    return ValuesIndices(values, tensor_type.Tensor._from_op(indices.astype(np.int64), None))


def sort(input, dim: int = -1, descending: bool = False, stable: bool = False):  # noqa: A002
    """``(values, indices)`` of ``input`` sorted along ``dim`` (torch.sort)."""
    d = normalize_dim(dim, input.ndim)
    array = input.array.reshape(1) if input.ndim == 0 else input.array
    return _values_indices(input, d, _order(array, d, descending), "SortBackward0")


def argsort(input, dim: int = -1, descending: bool = False, stable: bool = False):  # noqa: A002
    """The indices of ``sort(input, dim, descending).indices`` (not differentiable)."""
    d = normalize_dim(dim, input.ndim)
    if input.ndim == 0:
        return tensor_type.Tensor._from_op(get_array_module(input.array).zeros((), np.int64), None)
    return tensor_type.Tensor._from_op(_order(input.array, d, descending).astype(np.int64), None)


def topk(input, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):  # noqa: A002
    """The ``k`` largest (``largest=False``: smallest) values along ``dim`` and their indices.

    The result is always sorted (largest first, or smallest first), which ``sorted=False``
    permits.
    """
    d = normalize_dim(dim, input.ndim)
    size = 1 if input.ndim == 0 else input.shape[d]
    k = int(k)
    if not 0 <= k <= size:
        raise RuntimeError(f"selected index k out of range (k={k}, size {size} along dim {d} "
                           f"of a tensor of shape {tuple(input.shape)})")
    array = input.array.reshape(1) if input.ndim == 0 else input.array
    order = _order(array, d, descending=largest)
    picked = order[(slice(None),) * d + (slice(0, k),)]
    return _values_indices(input, d, picked, "TopkBackward0")
