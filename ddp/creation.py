"""Tensor factories: ``tensor``, ``zeros``, ``ones``, ``full``, ``arange``, ``randn`` ...

Defaults follow torch: Python floats give ``float32``, Python ints ``int64``, bools ``bool``;
a NumPy array keeps its dtype.
"""

from __future__ import annotations

import math

import numpy as np

from ddp import dtypes, random
from ddp.device import as_device, get_default_device, move_array
from ddp.ops._util import shape_arg
from ddp.tensor import Tensor


def _finish(array, dtype, device, requires_grad) -> Tensor:
    if dtype is not None:
        np_dtype = dtypes.to_numpy_dtype(dtype)
        if array.dtype != np_dtype:
            array = array.astype(np_dtype)
    if device is not None:
        array = move_array(array, as_device(device))
    elif get_default_device().type != "cpu":  # ddp.set_default_device / with ddp.device(...)
        array = move_array(array, get_default_device())
    return Tensor(array, requires_grad=requires_grad)


def _infer_array(data, dtype=None) -> np.ndarray:
    """``data`` as a new array: of ``dtype`` when given (Python numbers convert straight to
    it, as in torch: ``tensor(0.3, dtype=float64)`` is 0.3, not a float32 rounding of it),
    else of the inferred dtype (float64 numbers become the default float dtype)."""
    if isinstance(data, Tensor):
        return data.array.copy()
    if isinstance(data, np.ndarray):
        return data.copy()
    if hasattr(data, "__cuda_array_interface__"):
        return data.copy()
    if isinstance(data, (list, tuple)):
        data = _unwrap_nested(data)
    array = np.array(data)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"could not build a tensor from data of type {type(data).__name__}")
    if isinstance(data, np.generic):  # a NumPy scalar keeps its dtype, as in torch
        return array
    if dtype is not None:
        return np.array(data, dtype=dtypes.to_numpy_dtype(dtype))
    if array.dtype == np.float64:
        return array.astype(dtypes.default_float.np_dtype)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    return array


def _unwrap_nested(data):
    if isinstance(data, Tensor):
        return data.array.tolist() if data.ndim else data.item()
    if isinstance(data, (list, tuple)):
        return [_unwrap_nested(d) for d in data]
    return data


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (nested lists, numbers, arrays or a tensor)."""
    return _finish(_infer_array(data, dtype), dtype, device, requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like ``tensor`` but shares memory with a NumPy array or tensor when it can."""
    if isinstance(data, Tensor):
        return data.to(device=device, dtype=dtype) if (device or dtype) else data
    if isinstance(data, np.ndarray):
        return _finish(data, dtype, device, False)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array``."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    dtypes.from_numpy(array.dtype)
    return Tensor(array)


def _sizes(shape: tuple) -> tuple:
    """``shape`` if no size is negative; torch's RuntimeError otherwise (NumPy's is a
    ValueError without the shape)."""
    for s in shape:
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: "
                               f"{list(shape)}")
    return shape


def _factory(fill):
    def make(*size, dtype=None, device=None, requires_grad=False, out=None):
        shape = _sizes(shape_arg(size))
        np_dtype = dtypes.to_numpy_dtype(dtype) if dtype is not None else (
            dtypes.default_float.np_dtype)
        return _finish(fill(shape, np_dtype), None, device, requires_grad)

    return make


zeros = _factory(lambda shape, dt: np.zeros(shape, dtype=dt))
ones = _factory(lambda shape, dt: np.ones(shape, dtype=dt))
empty = _factory(lambda shape, dt: np.empty(shape, dtype=dt))


def full(size, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    if dtype is None:
        dtype = (dtypes.bool_ if isinstance(fill_value, bool) else dtypes.int64
                 if isinstance(fill_value, int) else dtypes.default_float)
    shape = _sizes(shape_arg((size,) if isinstance(size, int) else tuple(size)))
    array = np.full(shape, fill_value, dtype=dtypes.to_numpy_dtype(dtype))
    return _finish(array, None, device, requires_grad)


def _like(fill):
    def make(t: Tensor, dtype=None, device=None, requires_grad=False):
        d = dtype if dtype is not None else t.dtype
        return fill(t.shape, dtype=d, device=device if device is not None else t.device,
                    requires_grad=requires_grad)

    return make


zeros_like = _like(zeros)
ones_like = _like(ones)
empty_like = _like(empty)


def full_like(t: Tensor, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    return full(t.shape, fill_value, dtype=dtype if dtype is not None else t.dtype,
                device=device if device is not None else t.device, requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
    """``[start, end)`` in steps of ``step``; torch's errors for a zero, infinite or
    inconsistent step (NumPy would divide by zero or return an empty array)."""
    if end is None:
        start, end = 0, start
    values = (start, end, step)
    for v in values:
        if isinstance(v, Tensor):
            v = v.item()
        if not math.isfinite(v):
            raise RuntimeError(f"unsupported range: {start} -> {end} (step {step})")
    if step == 0:
        raise RuntimeError("step must be nonzero")
    if (end - start) * step < 0:
        raise RuntimeError(f"upper bound and lower bound inconsistent with step sign "
                           f"(start={start}, end={end}, step={step})")
    if dtype is None:
        is_float = any(isinstance(v, float) for v in values)
        dtype = dtypes.default_float if is_float else dtypes.int64
    np_dtype = dtypes.to_numpy_dtype(dtype)
    if np_dtype.kind == "f":  # torch steps in double, then rounds: 0.3 * 3 -> float32(0.9)
        array = np.arange(start, end, step, dtype=np.float64).astype(np_dtype)
    else:
        array = np.arange(start, end, step, dtype=np_dtype)
    return _finish(array, None, device, requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False) -> Tensor:
    if steps < 0:
        raise RuntimeError(f"number of steps must be non-negative, got {steps}")
    array = np.linspace(start, end, steps).astype(
        dtypes.to_numpy_dtype(dtype or dtypes.default_float))
    return _finish(array, None, device, requires_grad)


def eye(n, m=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    for name, v in (("n", n), ("m", m)):
        if v is not None and v < 0:
            raise RuntimeError(f"{name} must be greater or equal to 0, got {v}")
    array = np.eye(n, m, dtype=dtypes.to_numpy_dtype(dtype or dtypes.default_float))
    return _finish(array, None, device, requires_grad)


def rand(*size, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    np_dtype = dtypes.to_numpy_dtype(dtype or dtypes.default_float)
    array = random.uniform_array(_sizes(shape_arg(size)), 0.0, 1.0, np_dtype, generator)
    return _finish(array, None, device, requires_grad)


def randn(*size, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    np_dtype = dtypes.to_numpy_dtype(dtype or dtypes.default_float)
    array = random.normal_array(_sizes(shape_arg(size)), 0.0, 1.0, np_dtype, generator)
    return _finish(array, None, device, requires_grad)


def randint(low, high=None, size=None, generator=None, dtype=None, device=None,
            requires_grad=False) -> Tensor:
    """``randint(high, size)`` or ``randint(low, high, size)``: integers in ``[low, high)``."""
    if size is None:
        if high is None or not isinstance(high, (tuple, list)):
            raise TypeError("randint() missing required argument 'size'")
        low, high, size = 0, low, high
    elif high is None:
        low, high = 0, low
    if low >= high:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={low} "
                           f">= to={high}")
    shape = _sizes(shape_arg((size,) if isinstance(size, int) else tuple(size)))
    array = random.integers_array(low, high, shape, generator)
    return _finish(array, dtype or dtypes.int64, device, requires_grad)


def randperm(n, generator=None, dtype=None, device=None) -> Tensor:
    _sizes((n,))
    return _finish(random.permutation_array(n, generator), dtype or dtypes.int64, device, False)


def rand_like(t: Tensor, dtype=None, device=None, requires_grad=False) -> Tensor:
    return rand(t.shape, dtype=dtype or t.dtype, device=device or t.device,
                requires_grad=requires_grad)


def randn_like(t: Tensor, dtype=None, device=None, requires_grad=False) -> Tensor:
    return randn(t.shape, dtype=dtype or t.dtype, device=device or t.device,
                 requires_grad=requires_grad)
