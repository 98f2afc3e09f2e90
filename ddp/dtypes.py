"""Tensor dtypes with torch's names (``ddp.float32`` ...), each backed by a NumPy dtype."""

from __future__ import annotations

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


class _UnsupportedDtype(dtype):
    """A torch dtype NumPy cannot hold: it exists so scripts that name it (a table of
    ``{"bfloat16": torch.bfloat16, ...}``) import, and any tensor of it is refused."""

    def __init__(self, name: str, is_floating_point: bool, itemsize: int):
        self.name = name
        self.is_floating_point = is_floating_point
        self.itemsize = itemsize

    @property
    def np_dtype(self):
        raise TypeError(f"ddp tensors cannot be {self!r}: NumPy has no {self.name}; use "
                        "float32 (or float16)")


bfloat16 = _UnsupportedDtype("bfloat16", True, 2)
float16 = dtype("float16", np.float16, True, 2)
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

_ALL = (float16, float32, float64, int8, uint8, int16, int32, int64, bool_)
_BY_NUMPY = {d.np_dtype: d for d in _ALL}
_BY_NAME = {d.name: d for d in _ALL}

default_float = float32


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
