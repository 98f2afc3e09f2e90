"""Tensor dtypes with torch's names (``ddp.float32`` ...), each backed by a NumPy dtype.

``bfloat16`` is backed by the ``ml_dtypes`` package's NumPy extension type (8 exponent bits,
8 significand bits). NumPy marks extension types with kind ``"V"``, not ``"f"``: ask
:func:`is_floating` whether an array dtype is floating, never ``dtype.kind == "f"``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np


class dtype:  # noqa: N801 - torch spells it in lower case
    """A tensor element type. Compare with ``==``; ``.is_floating_point`` as in torch."""

    def __init__(self, name: str, np_dtype: np.dtype, is_floating_point: bool, itemsize: int):
        self.name = name
        self.np_dtype = np.dtype(np_dtype)
        self.is_floating_point = is_floating_point
        self.itemsize = itemsize

    def __repr__(self) -> str:
        return f"ddp.{self.name}"

    def __reduce__(self):
        return (get_dtype, (self.name,))


float16 = dtype("float16", np.float16, True, 2)
bfloat16 = dtype("bfloat16", ml_dtypes.bfloat16, True, 2)
float32 = dtype("float32", np.float32, True, 4)
float64 = dtype("float64", np.float64, True, 8)
int8 = dtype("int8", np.int8, False, 1)
uint8 = dtype("uint8", np.uint8, False, 1)
int16 = dtype("int16", np.int16, False, 2)
int32 = dtype("int32", np.int32, False, 4)
int64 = dtype("int64", np.int64, False, 8)
bool_ = dtype("bool", np.bool_, False, 1)

half = float16
float_ = float32  # torch.float
double = float64
long = int64
int_ = int32  # torch.int

_ALL = (float16, bfloat16, float32, float64, int8, uint8, int16, int32, int64, bool_)
_BY_NUMPY = {d.np_dtype: d for d in _ALL}
_BY_NAME = {d.name: d for d in _ALL}

default_float = float32
BFLOAT16 = bfloat16.np_dtype  # the NumPy dtype of bfloat16 arrays


def is_floating(np_dtype) -> bool:
    """True for a floating NumPy dtype, ``ml_dtypes.bfloat16`` included."""
    return np_dtype.kind == "f" or np_dtype == BFLOAT16


def is_inexact(np_dtype) -> bool:
    """True for floating and complex NumPy dtypes (bfloat16 included)."""
    return np_dtype.kind in "fc" or np_dtype == BFLOAT16


def get_dtype(name: str) -> dtype:
    """Look a dtype up by its name (``"float32"``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise TypeError(f"unknown dtype name {name!r}; known: {sorted(_BY_NAME)}") from None


def from_numpy(np_dtype) -> dtype:
    """The ddp dtype of a NumPy dtype; TypeError for types tensors cannot hold."""
    try:
        return _BY_NUMPY[np.dtype(np_dtype)]
    except (KeyError, TypeError):
        raise TypeError(f"ddp tensors cannot hold NumPy dtype {np_dtype!r}") from None


def to_numpy_dtype(d) -> np.dtype:
    """Accept a ddp dtype, a NumPy dtype, a type such as ``float`` or a name; return NumPy's."""
    if isinstance(d, dtype):
        return d.np_dtype
    if d is builtins_float:
        return default_float.np_dtype
    if d is builtins_int:
        return np.dtype(np.int64)
    if d is builtins_bool:
        return np.dtype(np.bool_)
    if isinstance(d, str):
        return get_dtype(d).np_dtype
    return from_numpy(d).np_dtype


import builtins as _builtins  # noqa: E402

builtins_float = _builtins.float
builtins_int = _builtins.int
builtins_bool = _builtins.bool


class finfo:  # noqa: N801 - torch spells it in lower case
    """Machine limits of a floating dtype, with torch's field names (``ddp.finfo(ddp.bfloat16)``).

    Raises:
        TypeError: ``type`` is not a floating dtype.
    """

    def __init__(self, type=None):  # noqa: A002 - torch's argument name
        d = default_float if type is None else type
        if not isinstance(d, dtype):
            d = from_numpy(to_numpy_dtype(d))
        if not d.is_floating_point:
            raise TypeError(f"torch.finfo() requires a floating point input type. Use "
                            f"torch.iinfo to handle '{d!r}'")
        info = ml_dtypes.finfo(d.np_dtype) if d is bfloat16 else np.finfo(d.np_dtype)
        self.dtype = d.name
        self.bits = d.itemsize * 8
        self.eps = float(info.eps)
        self.max = float(info.max)
        self.min = float(info.min)
        self.tiny = self.smallest_normal = float(info.smallest_normal)
        self.resolution = 10.0 ** -int(info.precision)

    def __repr__(self) -> str:
        return (f"finfo(resolution={self.resolution:g}, min={self.min:g}, max={self.max:g}, "
                f"eps={self.eps:g}, smallest_normal={self.smallest_normal:g}, "
                f"tiny={self.tiny:g}, dtype={self.dtype})")
