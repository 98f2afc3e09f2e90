"""A NumPy-backed stand-in for CuPy that is as strict as CuPy about host/device mixing.

``DDP_FAKE_CUPY=1 pytest -m gpu tests/gpu`` (tests/conftest.py installs it as ``cupy`` before
ddp is imported) runs the GPU tests on a machine without a GPU. It finds the bugs that need no
GPU to show: a device array converted implicitly to NumPy (``np.asarray(x)``, which CuPy
refuses), a NumPy array mixed into a device op (CuPy refuses), a result left on the host, a
module-level ``np.zeros`` where ``xp.zeros`` was meant. It finds nothing about CUDA itself:
fused kernels (``ElementwiseKernel``/``RawKernel``) and NCCL are absent, so those paths run their
references (``DDP_FUSED_KERNELS=0``) or skip. The real check is ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import operator
import sys
import types

import numpy as np


def _is_host_array(value) -> bool:
    return isinstance(value, np.ndarray)


def _unwrap(value, *, allow_host: bool, where: str):
    if isinstance(value, ndarray):
        return value._a
    if _is_host_array(value):
        if not allow_host:
            raise TypeError(f"Unsupported type {type(value)} (fake CuPy: a NumPy array in {where})")
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, allow_host=allow_host, where=where) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, allow_host=allow_host, where=where) for k, v in value.items()}
    return value


def _wrap(value):
    if isinstance(value, (np.ndarray, np.generic)):  # CuPy reductions give 0-d device arrays
        return ndarray(value)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class _Device:
    def __init__(self, index: int = 0):
        self.id = int(index)

    def use(self):
        return None

    def synchronize(self):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


_DEVICE0 = _Device(0)


class ndarray:  # noqa: N801 - cupy.ndarray
    """A device array: NumPy inside, but refuses implicit conversion and host operands."""

    __array_priority__ = 100

    def __init__(self, array):
        self._a = np.asarray(array)

    # ---------------------------------------------------------------- what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = _unwrap(inputs, allow_host=False, where=f"{ufunc.__name__}")
        result = getattr(ufunc, method)(*args, **_unwrap(kwargs, allow_host=False,
                                                            where=ufunc.__name__))
        if "out" in kwargs:  # written in place into the wrapped buffers: hand those back
            outs = kwargs["out"]
            return outs[0] if isinstance(outs, tuple) and len(outs) == 1 else outs
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        if not any(getattr(mod, func.__name__, None) is func for mod in (np, np.linalg, np.fft)):
            # CuPy implements only NumPy's own functions (np.testing's are not among them)
            raise TypeError(f"no implementation found for {func.__module__}.{func.__name__} "
                            f"on fake CuPy arrays")
        allow = func.__name__ in ("may_share_memory", "shares_memory", "result_type",
                                  "can_cast")
        a = _unwrap(args, allow_host=allow, where=f"np.{func.__name__}")
        k = _unwrap(kwargs, allow_host=allow, where=f"np.{func.__name__}")
        return _wrap(func(*a, **k))

    # ---------------------------------------------------------------- what CuPy allows
    def get(self, stream=None, out=None):
        if out is not None:
            out[...] = self._a
            return out
        return self._a.copy()

    def set(self, array, stream=None):
        self._a[...] = array

    @property
    def device(self):
        return _DEVICE0

    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value):  # CuPy reshapes a contiguous array in place
        if not self._a.flags.c_contiguous:
            raise AttributeError("incompatible shape")
        self._a = self._a.reshape(value)

    @property
    def data(self):  # MemoryPointer-like: .ptr is the address of the first element
        return types.SimpleNamespace(ptr=self._a.ctypes.data)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "version": 3,
                "data": (self._a.ctypes.data, False)}

    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__, __array_struct__: host-only protocols
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            def method(*args, **kwargs):
                return _wrap(value(*_unwrap(args, allow_host=True, where=name),
                                   **_unwrap(kwargs, allow_host=True, where=name)))
            return method
        return _wrap(value)

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, allow_host=True, where="indexing")])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, allow_host=True, where="indexing")] = _unwrap(
            value, allow_host=True, where="setitem")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    def __index__(self):
        return operator.index(self._a)

    def __repr__(self):
        return repr(self._a).replace("array", "fake_cupy_array", 1)

    def __str__(self):
        return str(self._a)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):
        raise TypeError("fake CuPy arrays are not picklable in this test double")


def _op(name):
    return getattr(operator, name + "_") if name in ("and", "or") else getattr(operator, name)


def _binary(name):
    def op(self, other):
        return _wrap(_op(name)(self._a, _unwrap(other, allow_host=False, where=f"operator {name}")))
    return op


def _reflected(name):
    def op(self, other):
        return _wrap(_op(name)(_unwrap(other, allow_host=False, where=f"operator {name}"), self._a))
    return op


def _inplace(name):
    def op(self, other):
        getattr(operator, name)(self._a, _unwrap(other, allow_host=False,
                                                 where=f"operator {name}"))
        return self
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift", "lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor"):
    setattr(ndarray, f"__r{_name}__", _reflected(_name))
    setattr(ndarray, f"__i{_name}__", _inplace(f"i{_name}"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda n: lambda self: _wrap(getattr(operator, n)(
        self._a)))(_name))
ndarray.__hash__ = None


# -------------------------------------------------------------------------------- the module
_HOST_OK = {"asarray", "array", "ascontiguousarray", "asanyarray"}


class _UFunc:
    """``cupy.add`` and friends: call, ``.at``, ``.reduce`` ..., host operands refused."""

    def __init__(self, ufunc):
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return getattr(np, self.__name__)(*args, **kwargs) if any(
            isinstance(a, ndarray) for a in args) else _wrap(self._u(*_unwrap(
                args, allow_host=False, where=self.__name__), **kwargs))

    def __getattr__(self, method):
        def call(*args, **kwargs):
            for a in args:
                if isinstance(a, ndarray):
                    return a.__array_ufunc__(self._u, method, *args, **kwargs)
            return _wrap(getattr(self._u, method)(*args, **kwargs))
        return call


def _as_strided(x, shape=None, strides=None):
    return ndarray(np.lib.stride_tricks.as_strided(x._a, shape, strides))


def _module_function(name):
    if name == "lib":
        lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=_as_strided))
        return lib
    func = getattr(np, name)
    if isinstance(func, np.ufunc):
        return _UFunc(func)
    if not callable(func) or isinstance(func, type):  # constants, dtypes (cupy.float32 ...)
        return func

    def call(*args, **kwargs):
        allow = name in _HOST_OK
        return _wrap(func(*_unwrap(args, allow_host=allow, where=f"cupy.{name}"),
                          **_unwrap(kwargs, allow_host=allow, where=f"cupy.{name}")))
    call.__name__ = name
    return call


def asnumpy(array, stream=None, out=None):
    if isinstance(array, ndarray):
        return array.get(out=out)
    return np.asarray(array)


def _host_assert(name):
    def check(actual, desired, *args, **kwargs):
        return getattr(np.testing, name)(asnumpy(actual), asnumpy(desired), *args, **kwargs)
    return check


testing = types.SimpleNamespace(assert_allclose=_host_assert("assert_allclose"),
                                assert_array_equal=_host_assert("assert_array_equal"))


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        return None


_POOL = _MemoryPool()


def get_default_memory_pool():
    return _POOL


def ElementwiseKernel(*args, **kwargs):  # noqa: N802
    raise NotImplementedError("fake CuPy has no CUDA kernels (set DDP_FUSED_KERNELS=0)")


RawKernel = ElementwiseKernel


class _Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def use(self):
        return self

    def synchronize(self):
        return None

    def wait_event(self, event):
        return None

    def record(self, event=None):
        event = event or _Event()
        return event

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.done = True

    def record(self, stream=None):
        return None

    def synchronize(self):
        return None

    def query(self):
        return True


_CURRENT_STREAM = _Stream()


def _build_cuda():
    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    runtime.getDevice = lambda: 0
    runtime.getDeviceProperties = lambda i: {"name": b"Fake GPU (NumPy)"}
    runtime.deviceSynchronize = lambda: None
    cuda.runtime = runtime
    cuda.Device = _Device
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.get_current_stream = lambda: _CURRENT_STREAM
    cuda.get_elapsed_time = lambda a, b: 0.0
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 0)
    return cuda


def _build_random():
    random = types.ModuleType("cupy.random")
    state = {"rng": np.random.default_rng(0)}

    def seed(value=None):
        state["rng"] = np.random.default_rng(value)

    random.seed = seed
    random.standard_normal = lambda size=None, dtype=np.float64: ndarray(
        state["rng"].standard_normal(size, dtype=dtype))
    random.random = lambda size=None, dtype=np.float64: ndarray(state["rng"].random(size,
                                                                                   dtype=dtype))
    return random


def module() -> types.ModuleType:
    """This module, with its ``cuda`` and ``random`` namespaces built (not installed)."""
    mod = sys.modules[__name__]
    if not hasattr(mod, "cuda"):
        mod.cuda = _build_cuda()
        mod.random = _build_random()
    return mod


def install() -> types.ModuleType:
    """Put this module into ``sys.modules`` as ``cupy`` (before ddp is imported)."""
    mod = module()
    mod.__version__ = "0.0-fake"
    mod.__name__ = "cupy"  # so "cupy.cuda.nccl" is looked up, and is missing
    sys.modules["cupy"] = mod
    sys.modules["cupy.cuda"] = mod.cuda
    sys.modules["cupy.cuda.runtime"] = mod.cuda.runtime
    sys.modules["cupy.random"] = mod.random
    return mod


def __getattr__(name):  # module attributes: NumPy functions returning fake device arrays
    if name.startswith("__"):
        raise AttributeError(name)
    return _module_function(name)


# The dtypes CuPy re-exports (cupy.float32 ...) come through __getattr__ from NumPy.
int32, int64, float32, float64 = np.int32, np.int64, np.float32, np.float64


class FakeCublas:
    """cuBLAS's gemm/gemmStridedBatched/gemv on raw host pointers, in NumPy (column-major,
    host pointer mode), to test the layout logic of ``ddp.kernels.cuda_gemm`` on a CPU."""

    def __init__(self):
        self.calls: list[str] = []

    @staticmethod
    def _matrix(ptr, rows, cols, ld, dtype):
        import ctypes

        count = ld * (cols - 1) + rows if cols else 0
        buf = (ctypes.c_char * (max(count, 1) * dtype.itemsize)).from_address(ptr)
        flat = np.frombuffer(buf, dtype=dtype, count=max(count, 1))
        return np.lib.stride_tricks.as_strided(flat, (rows, cols),
                                               (dtype.itemsize, ld * dtype.itemsize))

    @staticmethod
    def _scalar(ptr, dtype):
        import ctypes

        return np.frombuffer((ctypes.c_char * dtype.itemsize).from_address(ptr), dtype)[0]

    def _gemm(self, dtype, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        assert lda >= max(1, m if ta == 0 else k) and ldb >= max(1, k if tb == 0 else n)
        assert ldc >= max(1, m)
        opa = self._matrix(a, m, k, lda, dtype) if ta == 0 else self._matrix(a, k, m, lda,
                                                                             dtype).T
        opb = self._matrix(b, k, n, ldb, dtype) if tb == 0 else self._matrix(b, n, k, ldb,
                                                                             dtype).T
        out = self._matrix(c, m, n, ldc, dtype)
        result = self._scalar(alpha, dtype) * (opa @ opb)
        beta = self._scalar(beta, dtype)
        out[...] = result if beta == 0 else result + beta * out

    def sgemm(self, handle, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        self.calls.append("gemm")
        self._gemm(np.dtype(np.float32), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def dgemm(self, handle, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        self.calls.append("gemm")
        self._gemm(np.dtype(np.float64), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def _batched(self, dtype, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc,
                 sc, count):
        self.calls.append("gemm_batched")
        isz = dtype.itemsize
        for i in range(count):
            self._gemm(dtype, ta, tb, m, n, k, alpha, a + i * sa * isz, lda, b + i * sb * isz,
                       ldb, beta, c + i * sc * isz, ldc)

    def sgemmStridedBatched(self, handle, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb,  # noqa: N802
                            beta, c, ldc, sc, count):
        self._batched(np.dtype(np.float32), ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb,
                      beta, c, ldc, sc, count)

    def dgemmStridedBatched(self, handle, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb,  # noqa: N802
                            beta, c, ldc, sc, count):
        self._batched(np.dtype(np.float64), ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb,
                      beta, c, ldc, sc, count)

    def _gemv(self, dtype, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
        self.calls.append("gemv")
        assert incx == 1 and incy == 1 and lda >= max(1, m)
        mat = self._matrix(a, m, n, lda, dtype)
        vec = self._matrix(x, n if trans == 0 else m, 1, max(n, m), dtype)[:, 0]
        out = self._matrix(y, m if trans == 0 else n, 1, max(n, m), dtype)[:, 0]
        out[...] = self._scalar(alpha, dtype) * ((mat if trans == 0 else mat.T) @ vec)

    def sgemv(self, handle, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
        self._gemv(np.dtype(np.float32), trans, m, n, alpha, a, lda, x, incx, beta, y, incy)

    def dgemv(self, handle, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
        self._gemv(np.dtype(np.float64), trans, m, n, alpha, a, lda, x, incx, beta, y, incy)
