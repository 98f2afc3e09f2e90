"""Array backends: NumPy always, CuPy when installed and a GPU is present.

This is the only module that imports ``cupy``. Everything else asks for the array module of an
array with :func:`get_array_module` (chainer's ``xp`` idiom), so one code path serves both.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np


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


def to_numpy(array) -> np.ndarray:
    """Copy a device array to host memory; a NumPy array is returned as is."""
    if isinstance(array, np.ndarray):
        return array
    if is_cupy_array(array):
        return array.get()
    return np.asarray(array)
