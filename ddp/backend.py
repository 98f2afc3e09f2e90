"""Array backends: NumPy always, CuPy when installed and a GPU is present.

This is the only module that imports ``cupy`` (``ddp.kernels.cuda_gemm`` imports CuPy's cuBLAS
bindings from ``cupy_backends``). Everything else asks for the array module of an array with
:func:`get_array_module` (chainer's ``xp`` idiom), so one code path serves both.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np

from ddp import dtypes


@functools.cache
def cupy_module() -> ModuleType | None:
    """Return the ``cupy`` module, or None when it is not installed or no GPU is usable."""
    try:
        import cupy  # the one import of cupy in the project
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def cupy_unavailable_reason() -> str:
    """Say in words why CuPy cannot be used (for skip messages and errors)."""
    try:
        import cupy
    except Exception as exc:
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy found no usable CUDA device ({type(exc).__name__}: {exc})"
    return "" if count > 0 else "CuPy found 0 CUDA devices"


@functools.cache
def cupy_bfloat16_problem() -> str | None:
    """None when CuPy holds ``ml_dtypes.bfloat16`` arrays (ddp's bfloat16); else why not."""
    cp = cupy_module()
    if cp is None:
        return cupy_unavailable_reason()
    try:
        probe = cp.asarray(np.ones(2, dtype=dtypes.BFLOAT16))
        if probe.dtype != dtypes.BFLOAT16 or float((probe + probe).sum()) != 4.0:
            return f"CuPy {cp.__version__} holds bfloat16 as {probe.dtype}"
    except Exception as exc:  # CuPy refuses the NumPy extension dtype (TypeError, ValueError)
        return (f"CuPy {getattr(cp, '__version__', '?')} has no bfloat16 dtype "
                f"({type(exc).__name__}: {exc})")
    return None


def get_array_module(array) -> ModuleType:
    """Return ``numpy`` or ``cupy``, whichever owns ``array``."""
    if type(array) is np.ndarray or isinstance(array, (np.ndarray, np.generic)):
        return np
    cp = cupy_module()
    if cp is not None and isinstance(array, cp.ndarray):
        return cp
    return np


def is_cupy_array(array) -> bool:
    """True when ``array`` is a CuPy array."""
    if isinstance(array, np.ndarray):
        return False
    cp = cupy_module()
    return cp is not None and isinstance(array, cp.ndarray)


_SCALARS: dict = {}  # (value, type, dtype, device) -> 0-d CuPy array, never written to


def scalar_array(xp: ModuleType, value, dtype, device_id: int = 0):
    """A 0-d array of ``value``; on the GPU one cached per (value, dtype, device).

    ``cupy.asarray(2.0)`` copies from pageable host memory, which waits for the GPU to drain
    its queue: a constant such as ``1 / sqrt(d)`` in every step would stall the pipeline each
    time. The cached arrays are shared, so callers must treat them as read-only (the ops use
    them only as operands).
    """
    if xp is np:
        return np.asarray(value, dtype=dtype)
    # float.hex keeps -0.0 apart from 0.0 (equal, same hash) and makes every NaN one key
    token = value.hex() if isinstance(value, float) else value
    key = (token, type(value), np.dtype(dtype).str, device_id)
    array = _SCALARS.get(key)
    if array is None:
        if len(_SCALARS) > 1024:  # bounded: values that never repeat do not grow it forever
            _SCALARS.clear()
        with xp.cuda.Device(device_id):
            array = _SCALARS[key] = xp.asarray(value, dtype=dtype)
    return array


def to_numpy(array) -> np.ndarray:
    """Copy a device array to host memory; a NumPy array is returned as is."""
    if isinstance(array, np.ndarray):
        return array
    if is_cupy_array(array):
        return array.get()
    return np.asarray(array)
