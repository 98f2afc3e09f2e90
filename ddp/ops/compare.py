"""Comparisons and logical ops: results are bool tensors outside the graph."""

from __future__ import annotations

from ddp import dtypes
from ddp.autograd import tensor_type
from ddp.backend import get_array_module
from ddp.ops.promotion import binary_operands


def _wrap(array):
    return tensor_type.Tensor._from_op(array, None)


def _compare(name: str):
    def op(a, b):
        if not isinstance(b, (tensor_type.Tensor, int, float, bool)) and not hasattr(b, "shape"):
            return NotImplemented if name in ("equal", "not_equal") else _type_error(name, b)
        a, b = binary_operands(a, b)
        return _wrap(getattr(get_array_module(a.array), name)(a.array, b.array))

    op.__name__ = name
    return op


def _type_error(name, b):
    raise TypeError(f"{name}(): unsupported operand type {type(b).__name__}")


eq = _compare("equal")
ne = _compare("not_equal")
lt = _compare("less")
le = _compare("less_equal")
gt = _compare("greater")
ge = _compare("greater_equal")
logical_and = _compare("logical_and")
logical_or = _compare("logical_or")
logical_xor = _compare("logical_xor")
bitwise_and = _compare("bitwise_and")  # ``&``: logical on bool tensors, bitwise on integers
bitwise_or = _compare("bitwise_or")
bitwise_xor = _compare("bitwise_xor")


def logical_not(a):
    return _wrap(get_array_module(a.array).logical_not(a.array))


def bitwise_not(a):
    if dtypes.is_floating(a.array.dtype):
        raise TypeError("~ (bitwise_not) is only defined for integer and bool tensors")
    return _wrap(get_array_module(a.array).invert(a.array))


def isfinite(a):
    return _wrap(get_array_module(a.array).isfinite(a.array))


def isnan(a):
    return _wrap(get_array_module(a.array).isnan(a.array))


def isinf(a):
    return _wrap(get_array_module(a.array).isinf(a.array))


def equal(a, b) -> bool:
    """True when shapes and all values agree."""
    return a.array.shape == b.array.shape and bool((a.array == b.array).all())


def allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False) -> bool:
    return bool(get_array_module(a.array).allclose(a.array, b.array, rtol=rtol, atol=atol,
                                                   equal_nan=equal_nan))


def any(a, dim=None, keepdim=False):  # noqa: A001
    return _wrap(get_array_module(a.array).asarray(a.array.any(axis=dim, keepdims=keepdim)))


def all(a, dim=None, keepdim=False):  # noqa: A001
    return _wrap(get_array_module(a.array).asarray(a.array.all(axis=dim, keepdims=keepdim)))
