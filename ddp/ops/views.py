"""``reshape`` and ``view``: a tensor's elements under a new shape or dtype, in the same memory.

torch's contract, which ddp keeps exactly:

* ``view(*shape)`` always aliases its input: a write through the view is seen in the base and
  the other way round. When the strides cannot express the new shape (``x.t().view(-1)``) it
  raises, as torch does, instead of copying.
* ``reshape(*shape)`` aliases whenever ``view`` could, and copies only otherwise.
* ``view(dtype)`` reinterprets the bytes (no conversion); the result is outside the graph.

Whether a view exists is decided by :func:`view_strides`, torch's ``computeStride``. NumPy's and
CuPy's ``reshape`` return a view under the same condition (both merge the contiguous runs of
dimensions and split them again), so after the check ``array.reshape`` is the view.
"""

from __future__ import annotations

import math

import numpy as np

from ddp import dtypes
from ddp.autograd import tensor_type
from ddp.autograd.function import Function
from ddp.ops._util import shape_arg

NOT_VIEWABLE = (
    "view size is not compatible with input tensor's size and stride (at least one dimension "
    "spans across two contiguous subspaces). Use .reshape(...) instead."
)

# torch's names of the element types, as its view(dtype) errors print them.
_TORCH_NAMES = {
    "float16": "Half", "bfloat16": "BFloat16", "float32": "Float", "float64": "Double",
    "int8": "Char", "uint8": "Byte",
    "int16": "Short", "int32": "Int", "int64": "Long", "bool": "Bool",
}
# torch reads a Python type given as a dtype as its 64-bit type (``x.view(float)`` is float64).
_PYTHON_TYPES = {float: dtypes.float64, int: dtypes.int64, bool: dtypes.bool_}


class Reshape(Function):
    backward_name = "ViewBackward0"

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        out = a.reshape(shape)
        # A view of ``a``'s memory (NumPy and CuPy point a view's base at the owner), or a copy.
        ctx.returns_view = out.base is not None and (out.base is a or out.base is a.base)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape), None


def infer_size(shape: tuple, numel: int) -> tuple:
    """``shape`` with its ``-1`` (at most one) resolved for ``numel`` elements.

    Raises:
        RuntimeError: torch's messages: two ``-1``, a negative size, a shape whose size is not
            ``numel``, or a ``-1`` that any size would satisfy (``numel`` 0 and a 0 in ``shape``).
    """
    # The common cases first, in C (reshape runs for every flatten/squeeze of a model step).
    product = math.prod(shape)
    if product == numel and (not shape or min(shape) >= 0):
        return shape
    if product < 0 and numel % product == 0 and min(shape) == -1 and shape.count(-1) == 1:
        i = shape.index(-1)
        return shape[:i] + (numel // -product,) + shape[i + 1:]
    inferred = None
    known = 1
    for i, size in enumerate(shape):
        if size == -1:
            if inferred is not None:
                raise RuntimeError("only one dimension can be inferred")
            inferred = i
        elif size >= 0:
            known *= size
        else:
            raise RuntimeError(
                f"invalid shape dimension {size} at index {i} of shape {list(shape)}"
            )
    if numel == known or (inferred is not None and known > 0 and numel % known == 0):
        if inferred is None:
            return shape
        if known == 0:
            raise RuntimeError(
                f"cannot reshape tensor of 0 elements into shape {list(shape)} because the "
                f"unspecified dimension size -1 can be any value and is ambiguous"
            )
        return shape[:inferred] + (numel // known,) + shape[inferred + 1:]
    raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")


def view_strides(shape: tuple, strides: tuple, new_shape: tuple, unit: int = 1) -> tuple | None:
    """Strides giving ``new_shape`` over the memory of (``shape``, ``strides``), or None.

    torch's ``computeStride``: the old dimensions fall into runs that are contiguous with each
    other; a view exists when the new dimensions tile every run exactly, none spanning two.
    ``strides`` may be in elements or bytes (the returned ones are in the same unit); ``unit`` is
    one element in that unit, for the cases torch answers with contiguous strides. ``new_shape``
    must hold as many elements as ``shape`` (see :func:`infer_size`).
    """
    if not shape:
        return (unit,) * len(new_shape)
    numel = 1
    for size in shape:
        numel *= size
    if numel == 0:  # no memory is read: any shape is a view (torch: contiguous strides)
        if tuple(shape) == tuple(new_shape):
            return tuple(strides)
        out = [unit] * len(new_shape)
        for d in range(len(new_shape) - 2, -1, -1):
            out[d] = max(new_shape[d + 1], 1) * out[d + 1]
        return tuple(out)
    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    chunk_base = strides[-1]  # stride of the innermost dimension of the current run
    tensor_numel = view_numel = 1
    for tensor_d in range(len(shape) - 1, -1, -1):
        tensor_numel *= shape[tensor_d]
        if tensor_d == 0 or (shape[tensor_d - 1] != 1
                             and strides[tensor_d - 1] != tensor_numel * chunk_base):
            # a run ends at tensor_d: the new dims (and any 1s) must fill it exactly
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                new_strides[view_d] = view_numel * chunk_base
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if tensor_d > 0:
                chunk_base = strides[tensor_d - 1]
                tensor_numel = view_numel = 1
    if view_d != -1:
        return None
    return tuple(new_strides)


def reshape(a, *shape):
    """``a`` with ``shape``: a view sharing ``a``'s memory when one exists, else a copy."""
    return Reshape.apply(a, infer_size(shape_arg(shape), a.array.size))


def view(a, *shape, dtype=None, size=None):
    """``a.view(*shape)`` or ``a.view(dtype)``, always sharing ``a``'s memory.

    Args:
        a: the tensor.
        *shape: the new shape (ints, one may be -1, or one sequence), or a single dtype.
        dtype: keyword form of ``a.view(dtype)``.
        size: keyword form of the shape.

    Returns:
        A tensor over ``a``'s memory. A shape view is differentiable (its gradient is reshaped
        back); a dtype view is not (as in torch it is outside the graph).

    Raises:
        RuntimeError: torch's messages for a bad shape (see :func:`infer_size`), for strides
            that cannot express ``shape`` without a copy, and for a dtype whose element size
            does not fit ``a``'s last dimension or strides (see :func:`view_dtype`).
        TypeError: no argument, both a shape and a dtype, or an argument that is neither.
    """
    if dtype is None and len(shape) == 1 and _is_dtype(shape[0]):
        dtype, shape = shape[0], ()
    if dtype is not None or size is not None or not shape:
        given = [type(s).__name__ for s in shape]
        given += [f"{k}={type(v).__name__}" for k, v in (("dtype", dtype), ("size", size))
                  if v is not None]
        if shape or (dtype is not None and size is not None) or not given:
            raise TypeError(
                f"view() received an invalid combination of arguments - got ({', '.join(given)}),"
                f" but expected one of: (dtype dtype), (tuple of ints size)"
            )
        if dtype is not None:
            return view_dtype(a, dtype)
        shape = (size,)
    array = a.array
    new_shape = infer_size(shape_arg(shape), array.size)
    if not array.flags.c_contiguous and view_strides(
            array.shape, array.strides, new_shape, array.itemsize) is None:
        raise RuntimeError(NOT_VIEWABLE)
    return Reshape.apply(a, new_shape)


def view_dtype(a, dtype):
    """``a``'s bytes read as ``dtype``: torch's ``view(dtype)``, outside the graph.

    Same element size: the shape and strides stay. A smaller element: the last dimension grows
    by the ratio and must have stride 1. A larger one: the last dimension shrinks by the ratio
    and must be divisible by it, have stride 1, and start (and every other stride must be) at a
    multiple of the ratio.

    Raises:
        RuntimeError: torch's message naming the size, stride or offset that does not fit.
    """
    target = _PYTHON_TYPES.get(dtype, dtype) if isinstance(dtype, type) else dtype
    new = dtypes.to_numpy_dtype(target)
    array = a.array
    old = array.dtype
    old_size, new_size = old.itemsize, new.itemsize
    if old_size != new_size:
        what = (f"to view {_TORCH_NAMES[old.name]} as {_TORCH_NAMES[new.name]} (different "
                f"element sizes)")
        if array.ndim == 0:
            raise RuntimeError(f"self.dim() cannot be 0 {what}")
        strides = [s // old_size for s in array.strides]
        if new_size > old_size:
            ratio = new_size // old_size
            if array.shape[-1] % ratio:
                raise RuntimeError(f"self.size(-1) must be divisible by {ratio} {what}, but got "
                                   f"{array.shape[-1]}")
            offset = _storage_offset(array)
            if offset % ratio:
                raise RuntimeError(f"self.storage_offset() must be divisible by {ratio} {what}, "
                                   f"but got {offset}")
        if strides[-1] != 1:
            raise RuntimeError(f"self.stride(-1) must be 1 {what}, but got {strides[-1]}")
        if new_size > old_size:
            for d, stride in enumerate(strides[:-1]):
                if stride % ratio:
                    raise RuntimeError(f"self.stride({d}) must be divisible by {ratio} {what}, "
                                       f"but got {stride}")
        if type(array) is not np.ndarray and not array.flags.c_contiguous:
            # CuPy reinterprets a different element size only on C-contiguous arrays
            raise RuntimeError(
                f"view(dtype) on a non-contiguous {a.device} tensor of shape {tuple(a.shape)} "
                f"with strides {tuple(strides)} {what} is not supported by CuPy; call "
                f".contiguous() first"
            )
    return tensor_type.Tensor._from_op(array.view(new), None)


def _is_dtype(value) -> bool:
    return isinstance(value, (dtypes.dtype, np.dtype)) or value is float or value is int \
        or value is bool


def _storage_offset(array) -> int:
    """Elements from the start of the memory ``array`` views (its ``base``) to its first one."""
    base = array.base
    if base is None or type(base) is not type(array):  # owns its memory, or wraps a buffer
        return 0
    return (_address(array) - _address(base)) // array.itemsize


def _address(array) -> int:
    if type(array) is np.ndarray:
        return array.__array_interface__["data"][0]
    return array.data.ptr
