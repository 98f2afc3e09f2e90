"""Matrix products on the GPU straight through cuBLAS (CuPy's own bindings to it).

``cupy.matmul`` spends 20 to 70 microseconds of host time per call deciding layouts and
batching; a small model's step is made of such calls. Here the layout is read off the strides
and one ``gemm``/``gemmStridedBatched``/``gemv`` call is made: a few microseconds.
The arithmetic is cuBLAS's plain FP32/FP64 GEMM (no TF32), as ``cupy.matmul`` and torch use.

Row-major ``C = A @ B`` is computed as column-major ``C^T = B^T A^T``. Shapes this module does
not handle (broadcast batch dims, other dtypes, another device) return None and the caller
uses ``@``. ``DDP_CUBLAS_DIRECT=0`` turns it off (A/B timing, debugging).
"""

from __future__ import annotations

import numpy as np

from ddp import config
from ddp.backend import cupy_module

ENABLED: bool = config.get("DDP_CUBLAS_DIRECT")  # read at import; tests patch the constant
_OP_N, _OP_T = 0, 1
_CONSTANTS = [np.ones((), np.float32), np.zeros((), np.float32), np.ones((), np.float64),
              np.zeros((), np.float64)]  # alive for the process: cuBLAS reads them by address
_ONE_ZERO = {np.dtype(np.float32): (_CONSTANTS[0].ctypes.data, _CONSTANTS[1].ctypes.data),
             np.dtype(np.float64): (_CONSTANTS[2].ctypes.data, _CONSTANTS[3].ctypes.data)}
_cublas = None


def _lib():
    global _cublas
    if _cublas is None:
        from cupy_backends.cuda.libs import cublas  # CuPy's Cython bindings to cuBLAS

        _cublas = cublas
    return _cublas


def _layout(rows: int, cols: int, s_row: int, s_col: int):
    """``(op, ld)`` making a stored matrix, read column-major, equal ``X^T`` (cols x rows)
    for a 2-D ``X`` with element strides ``(s_row, s_col)``; None if it needs a copy."""
    if (s_col == 1 or cols == 1) and (rows == 1 or s_row >= max(cols, 1)):
        return _OP_N, (s_row if rows > 1 else max(cols, 1))
    if (s_row == 1 or rows == 1) and (cols == 1 or s_col >= max(rows, 1)):
        return _OP_T, (s_col if cols > 1 else max(rows, 1))
    return None


def _batch_stride(x, lead: tuple) -> int | None:
    """Element stride between the matrices of ``x`` if its leading dims collapse to one."""
    isz = x.itemsize
    stride = None
    expected = None
    for size, s in zip(reversed(lead), reversed(x.strides[:-2]), strict=True):
        if size == 1:
            continue
        if s % isz:
            return None
        if stride is None:
            stride, expected = s // isz, (s // isz) * size
        elif s // isz != expected:
            return None
        else:
            expected *= size
    return 0 if stride is None else stride


def matmul(a, b):
    """``a @ b`` for float32/float64 CuPy arrays of 2 or more dims with equal leading dims,
    or None when that case is left to ``cupy.matmul``."""
    if not ENABLED or a.ndim < 2 or a.ndim != b.ndim or a.dtype != b.dtype:
        return None
    consts = _ONE_ZERO.get(a.dtype)
    if consts is None:
        return None
    lead = a.shape[:-2]
    if lead != b.shape[:-2]:
        return None
    cp = cupy_module()
    device = cp.cuda.runtime.getDevice()
    if a.device.id != device or b.device.id != device:
        return None
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if b.shape[-2] != k:
        return None  # let cupy raise its shape error
    out = cp.empty(lead + (m, n), dtype=a.dtype)
    if out.size == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    isz = a.itemsize
    batch = 1
    for size in lead:
        batch *= size
    operands = []
    for x in (a, b):
        stride = _batch_stride(x, lead) if batch > 1 else 0
        s_row, s_col = x.strides[-2], x.strides[-1]
        lay = None
        if stride is not None and s_row % isz == 0 and s_col % isz == 0 and s_row >= 0 \
                and s_col >= 0:
            lay = _layout(x.shape[-2], x.shape[-1], s_row // isz, s_col // isz)
        if lay is None:
            x = cp.ascontiguousarray(x)
            stride = x.shape[-2] * x.shape[-1] if batch > 1 else 0
            lay = _layout(x.shape[-2], x.shape[-1], x.strides[-2] // isz, x.strides[-1] // isz)
        operands.append((x, lay, stride))
    (xa, (op_a, ld_a), st_a), (xb, (op_b, ld_b), st_b) = operands
    one, zero = consts
    lib = _lib()
    handle = cp.cuda.device.get_cublas_handle()
    single = a.dtype == np.float32
    if batch == 1:
        gemm = lib.sgemm if single else lib.dgemm
        gemm(handle, op_b, op_a, n, m, k, one, xb.data.ptr, ld_b, xa.data.ptr, ld_a, zero,
             out.data.ptr, n)
    else:
        gemm = lib.sgemmStridedBatched if single else lib.dgemmStridedBatched
        gemm(handle, op_b, op_a, n, m, k, one, xb.data.ptr, ld_b, st_b, xa.data.ptr, ld_a, st_a,
             zero, out.data.ptr, n, m * n, batch)
    return out


_ONES: dict = {}


def column_sums(x2):
    """Sums over the rows of a 2-D float array: one ``gemv`` with a cached vector of ones."""
    cp = cupy_module()
    consts = _ONE_ZERO.get(x2.dtype)
    rows, cols = x2.shape
    key = (rows, x2.dtype.str, x2.device.id)
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) >= 64:
            _ONES.clear()
        ones = _ONES[key] = cp.ones(rows, dtype=x2.dtype)
    if not ENABLED or consts is None or x2.device.id != cp.cuda.runtime.getDevice():
        return ones @ x2
    out = cp.empty(cols, dtype=x2.dtype)
    if cols == 0:
        return out
    if rows == 0:
        out.fill(0)
        return out
    x2 = cp.ascontiguousarray(x2)
    one, zero = consts
    lib = _lib()
    gemv = lib.sgemv if x2.dtype == np.float32 else lib.dgemv
    # x2 read column-major is (cols x rows) with ld = cols: out = that @ ones
    gemv(cp.cuda.device.get_cublas_handle(), _OP_N, cols, rows, one, x2.data.ptr, cols,
         ones.data.ptr, 1, zero, out.data.ptr, 1)
    return out
