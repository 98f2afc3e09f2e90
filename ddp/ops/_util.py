"""Helpers shared by the op modules: dims, shapes, un-broadcasting (on arrays, not tensors).

Operand conversion and dtype promotion, which build tensors and casts, are in ``promotion.py``.
"""

from __future__ import annotations

import operator

import numpy as np


def reshape_fresh(array, shape: tuple):
    """``array`` with ``shape``; a CuPy array is reshaped in place when it can be (no view).

    For a gradient a backward just made: a view has a ``base``, and autograd copies it before
    adopting it as a leaf's ``.grad``; the same array reshaped in place is adopted as is. (NumPy
    deprecates assigning ``.shape``, and a host copy is cheap: NumPy arrays get a view.)
    """
    shape = tuple(shape)
    if array.shape == shape:
        return array
    if type(array) is not np.ndarray:
        try:
            array.shape = shape
            return array
        except (AttributeError, ValueError):  # not contiguous, or no shape setter
            pass
    return array.reshape(shape)


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, size in enumerate(shape) if size == 1 and grad.shape[i + lead] != 1
    )
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if lead:
        grad = grad.reshape(shape)
    elif grad.shape != shape:
        grad = grad.reshape(shape)
    return grad


def normalize_dims(dim, ndim: int) -> tuple | None:
    """``dim`` (None, int or sequence, negatives allowed) as a sorted tuple of axes."""
    if dim is None:
        return None
    if isinstance(dim, (list, tuple)):
        if len(dim) == 0:
            return None
        return tuple(sorted(normalize_dim(d, ndim) for d in dim))
    return (normalize_dim(dim, ndim),)


def normalize_dim(dim: int, ndim: int) -> int:
    """A single dim in ``[0, ndim)``; IndexError naming the range otherwise."""
    dim = int(dim)
    bound = max(ndim, 1)
    if not -bound <= dim < bound:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-bound}, {bound - 1}], but got "
            f"{dim})"
        )
    return dim % bound


def shape_arg(args) -> tuple:
    """Accept ``f(2, 3)`` and ``f((2, 3))`` / ``f([2, 3])`` / ``f(Size)`` shapes."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    try:
        return tuple(operator.index(s) for s in args)
    except TypeError:
        # int() would truncate 2.5 to 2 and build a silently wrong shape.
        bad = next(s for s in args if not _is_index(s))
        raise TypeError(
            f"size must be a sequence of ints, but got {type(bad).__name__} {bad!r} in "
            f"{tuple(args)}"
        ) from None


def _is_index(value) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
