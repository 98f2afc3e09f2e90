"""Helpers shared by the op modules: operand conversion, dtype promotion, un-broadcasting."""

from __future__ import annotations

import operator

import numpy as np

from ddp import dtypes
from ddp.backend import get_array_module, scalar_array


def as_tensor_operand(value, like):
    """Turn a Python number/array ``value`` into a Tensor matching ``like``'s device.

    Python scalars keep torch's "weak" typing: a float next to an integer tensor gives the
    default float dtype, an int next to a float tensor keeps the float dtype.
    """
    from ddp.tensor import Tensor

    if isinstance(value, Tensor):
        return value
    xp = get_array_module(like.array)
    like_dtype = like.array.dtype
    device_id = 0 if xp is np else like.array.device.id
    if isinstance(value, bool):
        array = scalar_array(xp, value, like_dtype if like_dtype != np.bool_ else np.bool_,
                             device_id)
    elif isinstance(value, int):
        array = scalar_array(xp, value, like_dtype if like_dtype != np.bool_ else np.int64,
                             device_id)
    elif isinstance(value, float):
        kind = like_dtype.kind
        target = like_dtype if kind == "f" else dtypes.default_float.np_dtype
        array = scalar_array(xp, value, target, device_id)
    else:
        array = xp.asarray(value)
        if array.dtype == np.float64 and not isinstance(value, np.ndarray):
            array = array.astype(dtypes.default_float.np_dtype)
    return Tensor._from_op(array, None)


def binary_operands(a, b):
    """Return ``(a, b)`` as tensors with a common dtype, following torch's promotion rules."""
    from ddp.tensor import Tensor

    if not isinstance(a, Tensor):
        a = as_tensor_operand(a, b)
    elif not isinstance(b, Tensor):
        b = as_tensor_operand(b, a)
    da, db = a.array.dtype, b.array.dtype
    if da == db:
        return a, b
    a0, b0 = a.array.ndim == 0, b.array.ndim == 0
    if a0 != b0:
        # A dimensioned operand decides unless the zero-dim one is of a higher category
        # (bool < integer < float): float32 (n,) + float64 0-d -> float32, as in torch.
        dim_dt, zero_dt = (db, da) if a0 else (da, db)
        target = dim_dt if _category(zero_dt) <= _category(dim_dt) else zero_dt
    else:
        target = promote(da, db)
    if da != target:
        a = cast_tensor(a, target)
    if db != target:
        b = cast_tensor(b, target)
    return a, b


def _category(dt: np.dtype) -> int:
    return 2 if dt.kind == "f" else 0 if dt.kind == "b" else 1


def promote(da: np.dtype, db: np.dtype) -> np.dtype:
    """torch's promotion: a float type beats any integer type; otherwise NumPy's lattice."""
    fa, fb = da.kind == "f", db.kind == "f"
    if fa and not fb:
        return da
    if fb and not fa:
        return db
    return np.promote_types(da, db)


def cast_tensor(t, np_dtype):
    from ddp.ops.misc import cast

    return cast(t, np.dtype(np_dtype))


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
