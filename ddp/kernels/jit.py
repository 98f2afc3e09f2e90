"""Numba, the compiler behind ``ddp.kernels.cpu``: one decorator and one availability check.

A CPU kernel is a plain Python loop over a range of a flat array, written once::

    @jit.compiled
    def relu_range(x, out, start, stop):
        for i in range(start, stop):
            out[i] = x[i] if x[i] > 0 else 0

and compiled by numba on its first call (``nogil``, so the rank's threads of
``ddp.kernels.parallel`` run ranges of it side by side; NumPy's error model, so a division
neither checks for zero nor stops the loop from being vectorised; floating point contraction
and reassociation, which let LLVM fuse multiply-adds and vectorise sums, but no assumption that
values are finite: infs and NaNs flow through as in NumPy, which GradScaler and masked softmax
rely on). Machine code is cached next to the source (numba's ``cache=True``, the way Python
caches bytecode in ``__pycache__``), so a process pays the compile once per kernel and machine.

numba is imported on the first compiled call, never by ``import ddp``. Without numba, or with
``DDP_JIT=0``, :func:`available` is False and ``ddp.kernels`` runs the NumPy reference instead:
the two paths compute the same formulas and are tested against the same float64 truth.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable

from ddp import config

ENABLED: bool = config.get("DDP_JIT")  # read at import; tests patch the constant
# Arrays of fewer elements take the reference: there a kernel saves less than a call costs, and
# a process that only ever touches small arrays (most tests, small jobs) never imports numba
# (about 1 s of start-up). Tests of the compiled path patch it to 0.
MIN_ELEMENTS = 1 << 14
FASTMATH = {"contract", "reassoc", "nsz"}  # never "nnan"/"ninf": infs and NaNs must survive

_lock = threading.RLock()
_numba = None  # the module once imported; False when the import failed


def _import_numba():
    global _numba
    if _numba is None:
        with _lock:
            if _numba is None:
                try:
                    import numba
                except ImportError:  # a declared dependency; without it the reference runs
                    numba = False
                _numba = numba
    return _numba


def available(array=None) -> bool:
    """Whether compiled CPU kernels run (for ``array``: it has ``MIN_ELEMENTS`` or more):
    ``DDP_JIT`` is on and numba imports."""
    if not ENABLED or (array is not None and array.size < MIN_ELEMENTS):
        return False
    return _import_numba() is not False


class _Lazy:
    """A function compiled by numba on its first call (from any thread)."""

    def __init__(self, fn: Callable, inline: bool = False) -> None:
        self._fn = fn
        self._inline = "always" if inline else "never"
        self._compiled = None
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        return self.dispatcher()(*args)

    def dispatcher(self):
        """The numba dispatcher of this function (created on first use; numba compiles it for
        each new argument signature)."""
        compiled = self._compiled
        if compiled is None:
            with _lock:
                if self._compiled is None:
                    numba = _import_numba()
                    if numba is False:
                        raise RuntimeError(f"{self.__name__}: numba is not installed")
                    self._compiled = numba.njit(nogil=True, cache=True, error_model="numpy",
                                                fastmath=FASTMATH, inline=self._inline)(
                        _with_compiled_callees(self._fn))
                compiled = self._compiled
        return compiled

    @property
    def py_func(self) -> Callable:
        """The plain Python function (what numba compiles): for reading and debugging."""
        return self._fn


def compiled(fn: Callable) -> _Lazy:
    """Decorator: ``fn`` compiled by numba (nogil, cached) on its first call.

    A compiled function may call the ``@compiled`` and ``@inlined`` functions of its module's
    globals.
    """
    return _Lazy(fn)


def inlined(fn: Callable) -> _Lazy:
    """Decorator: a small helper of compiled functions (a vectorisable ``exp``), inlined into
    each caller by numba so that the caller's loop still vectorises (numba does not let LLVM
    inline one compiled function into another).

    numba's cache keys a caller on its own source file only: after editing a helper, delete the
    cached machine code of its callers (``__pycache__/*.nbi``, ``*.nbc``) or touch their files.
    """
    return _Lazy(fn, inline=True)


def _with_compiled_callees(fn: Callable) -> Callable:
    """``fn``, or a copy of it whose globals name the numba dispatchers of the ``_Lazy``
    functions it calls (numba calls only numba functions); the module is left unchanged."""
    callees = {name: value for name in fn.__code__.co_names
               if isinstance(value := fn.__globals__.get(name), _Lazy)}
    if not callees:
        return fn
    namespace = dict(fn.__globals__)
    namespace.update({name: callee.dispatcher() for name, callee in callees.items()})
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    return copy
