"""Operands of the op functions: Python values as tensors, and torch's dtype promotion."""

from __future__ import annotations

import numpy as np

from ddp import dtypes
from ddp.autograd import tensor_type
from ddp.backend import get_array_module, scalar_array
from ddp.ops.misc import cast


def as_tensor_operand(value, like):
    """Turn a Python number/array ``value`` into a Tensor matching ``like``'s device.

    Python scalars keep torch's "weak" typing: a float next to an integer tensor gives the
    default float dtype, an int next to a float tensor keeps the float dtype.
    """
    if isinstance(value, tensor_type.Tensor):
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
        target = like_dtype if dtypes.is_floating(like_dtype) else dtypes.default_float.np_dtype
        array = scalar_array(xp, value, target, device_id)
    else:
        array = xp.asarray(value)
        if array.dtype == np.float64 and not isinstance(value, np.ndarray):
            array = array.astype(dtypes.default_float.np_dtype)
    return tensor_type.Tensor._from_op(array, None)


def binary_operands(a, b):
    """Return ``(a, b)`` as tensors with a common dtype, following torch's promotion rules."""
    tensor_class = tensor_type.Tensor
    if not isinstance(a, tensor_class):
        a = as_tensor_operand(a, b)
    elif not isinstance(b, tensor_class):
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
    return 2 if dtypes.is_floating(dt) else 0 if dt.kind == "b" else 1


def promote(da: np.dtype, db: np.dtype) -> np.dtype:
    """torch's promotion: a float type beats any integer type; otherwise NumPy's lattice."""
    fa, fb = dtypes.is_floating(da), dtypes.is_floating(db)
    if fa and not fb:
        return da
    if fb and not fa:
        return db
    return np.promote_types(da, db)


def cast_tensor(t, np_dtype):
    """``t`` converted to ``np_dtype`` (anything ``np.dtype`` accepts), through ``ops.cast``."""
    return cast(t, np.dtype(np_dtype))
