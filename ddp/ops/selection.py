"""Indexing and selection: ``x[idx]``, ``x[idx] = v``, where, masked_fill, gather, max/min pairs."""

from __future__ import annotations

import numpy as np

from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module, scalar_array
from ddp.ops._util import normalize_dim, unbroadcast
from ddp.ops.promotion import binary_operands


def normalize_index(index, shape: tuple | None = None):
    """Replace tensors inside an index by their arrays (bool tensors stay masks).

    With the ``shape`` of the indexed tensor, integer index arrays are also checked to be in
    range (IndexError naming the index, the dimension and its size, as torch raises).
    """
    tensor_class = tensor_type.Tensor
    if isinstance(index, tensor_class):
        index = index.array
    elif isinstance(index, tuple):
        index = tuple(i.array if isinstance(i, tensor_class) else i for i in index)
    elif isinstance(index, list):
        index = np.asarray([i.item() if isinstance(i, tensor_class) else i for i in index])
    if shape is not None and not _is_basic(index):
        _check_array_indices(index, tuple(shape))
    return index


def _index_on_device(index, xp):
    """``index`` with its NumPy arrays copied to the device of ``xp`` (CuPy)."""
    if isinstance(index, np.ndarray):
        return xp.asarray(index)
    if isinstance(index, tuple):
        return tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index)
    return index


def _is_basic(index) -> bool:
    """Basic indexing (ints, slices, None, Ellipsis) gives views and never repeats an element."""
    items = index if isinstance(index, tuple) else (index,)
    return all(
        isinstance(i, (int, slice, type(None), type(Ellipsis))) and not isinstance(i, bool)
        for i in items
    )


class GetItem(Function):
    def name(self) -> str:
        if not _is_basic(self.index):
            return "IndexBackward0"
        items = self.index if isinstance(self.index, tuple) else (self.index,)
        return "SelectBackward0" if any(isinstance(i, int) for i in items) else "SliceBackward0"

    @staticmethod
    def forward(ctx, a, index):
        if type(a) is not np.ndarray:  # index arrays given on the host go where ``a`` is
            index = _index_on_device(index, get_array_module(a))
        ctx.shape = a.shape
        ctx.index = index
        ctx.returns_view = _is_basic(index)
        try:
            return a[index]
        except IndexError as exc:
            raise IndexError(f"{exc} (indexing a tensor of shape {tuple(a.shape)})") from None

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        if _is_basic(ctx.index):
            out[ctx.index] = grad
        else:
            xp.add.at(out, ctx.index, grad)
        return out, None


class IndexPut(Function):
    """``a[index] = value`` done out of place: the graph sees a new tensor."""

    @staticmethod
    def forward(ctx, a, value, index):
        out = a.copy()
        out[index] = value
        ctx.index = index
        ctx.value_shape = getattr(value, "shape", ())
        return out

    @staticmethod
    def backward(ctx, grad):
        ga = grad.copy()
        ga[ctx.index] = 0
        gv = None
        if ctx.needs_input_grad[1]:
            gv = unbroadcast(grad[ctx.index], tuple(ctx.value_shape))
        return ga, gv, None


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return get_array_module(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, grad):
        (cond,) = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = unbroadcast(grad * cond, sa) if ctx.needs_input_grad[1] else None
        gb = unbroadcast(grad * ~cond, sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, a, mask, value):
        xp = get_array_module(a)
        ctx.save_for_backward(mask)
        ctx.shape = a.shape
        fill = scalar_array(xp, value, a.dtype, 0 if xp is np else a.device.id)
        return xp.where(mask, fill, a)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        xp = get_array_module(grad)
        zero = scalar_array(xp, 0, grad.dtype, 0 if xp is np else grad.device.id)
        return unbroadcast(xp.where(mask, zero, grad), ctx.shape), None, None  # one pass


class Gather(Function):
    @staticmethod
    def forward(ctx, a, dim, index):
        xp = get_array_module(a)
        ctx.shape = a.shape
        ctx.dim = dim
        ctx.save_for_backward(index)
        return xp.take_along_axis(a, index, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        xp = get_array_module(grad)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        # put_along_axis would drop repeated indices; add.at sums them as the gradient must.
        nd = index.ndim  # sparse open grids (CuPy's indices has no ``sparse``)
        idx = [xp.arange(n).reshape([n if k == j else 1 for j in range(nd)])
               for k, n in enumerate(index.shape)]
        idx[ctx.dim] = index
        xp.add.at(out, tuple(idx), grad)
        return out, None, None


class IndexSelect(Function):
    @staticmethod
    def forward(ctx, a, dim, index):
        ctx.shape = a.shape
        ctx.dim = dim
        ctx.save_for_backward(index)
        return get_array_module(a).take(a, index, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        xp = get_array_module(grad)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        moved = xp.moveaxis(out, ctx.dim, 0)
        xp.add.at(moved, index, xp.moveaxis(grad, ctx.dim, 0))
        return out, None, None


class Maximum(Function):
    def name(self) -> str:
        return "MaximumBackward0" if self.take_max else "MinimumBackward0"

    @staticmethod
    def forward(ctx, a, b, take_max):
        xp = get_array_module(a)
        ctx.save_for_backward(a, b)
        ctx.take_max = take_max
        return xp.maximum(a, b) if take_max else xp.minimum(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        # The winner takes the gradient; a tie splits it evenly (torch's rule). Weights are
        # built in the gradient's dtype so a float32 graph stays float32.
        pick_a = (a > b) if ctx.take_max else (a < b)
        half = grad * (a == b).astype(grad.dtype) * 0.5
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(grad * pick_a + half, a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(grad * (~pick_a & (a != b)) + half, b.shape)
        return ga, gb, None


def _check_array_indices(index, shape: tuple) -> None:
    """Integer index arrays in range, as torch checks (CuPy would wrap them silently).

    Negative entries count from the end, as in Python; anything else the walk cannot place
    (too many indices, a bad type) is left for NumPy/CuPy to refuse.
    """
    items = index if isinstance(index, tuple) else (index,)

    def width(item) -> int:  # how many dims of ``a`` an index item consumes
        if item is None or item is Ellipsis:
            return 0
        if hasattr(item, "dtype") and item.dtype == np.bool_:
            return item.ndim
        return 1

    dim = 0
    for item in items:
        if item is Ellipsis:
            dim += max(len(shape) - sum(width(i) for i in items), 0)
            continue
        if (hasattr(item, "dtype") and item.dtype.kind in "iu" and getattr(item, "size", 0)
                and dim < len(shape)):
            size = shape[dim]
            low, high = index_range(item)
            if low < -size or high >= size:
                bad = high if high >= size else low
                raise IndexError(f"index {bad} is out of bounds for dimension {dim} with size "
                                 f"{size} (indexing a tensor of shape {tuple(shape)})")
        dim += width(item)


def getitem(a, index):
    """``a[index]`` with NumPy/torch semantics; repeated integer indices sum their gradients."""
    index = normalize_index(index, a.array.shape)
    return GetItem.apply(a, index)


@autocast_op("index_put")
def index_put(a, index, value):
    tensor_class = tensor_type.Tensor
    index = normalize_index(index, a.array.shape)
    if not isinstance(value, tensor_class):
        value = tensor_class(get_array_module(a.array).asarray(value, dtype=a.array.dtype))
    elif value.array.dtype != a.array.dtype:
        value = value.to(a.dtype)
    return IndexPut.apply(a, value, index)


def where(condition, a=None, b=None):
    """Pick ``a`` where ``condition`` holds, else ``b`` (all broadcast together)."""
    tensor_class = tensor_type.Tensor
    if a is None and b is None:
        return tuple(tensor_class(i.astype(np.int64)) for i in get_array_module(
            condition.array).nonzero(condition.array))
    if not isinstance(a, tensor_class) and not isinstance(b, tensor_class):
        raise TypeError("where(): at least one of the values must be a Tensor")
    a, b = binary_operands(a, b)
    cond = condition.array if isinstance(condition, tensor_class) else np.asarray(condition)
    if cond.dtype != np.bool_:
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a tensor "
                           f"with dtype {cond.dtype}")
    return Where.apply(tensor_class._from_op(cond, None), a, b)


def masked_fill(a, mask, value):
    """Set positions where ``mask`` (bool, broadcastable to ``a``) is True to ``value``."""
    tensor_class = tensor_type.Tensor
    m = mask.array if isinstance(mask, tensor_class) else np.asarray(mask)
    if m.dtype != np.bool_:
        raise RuntimeError(f"masked_fill_ only supports boolean masks, but got mask with dtype "
                           f"{m.dtype}")
    if isinstance(value, tensor_class):
        value = value.item()
    try:
        np.broadcast_shapes(m.shape, a.array.shape)
    except ValueError:
        raise RuntimeError(
            f"The size of the mask {tuple(m.shape)} must be broadcastable to the tensor of shape "
            f"{tuple(a.array.shape)}"
        ) from None
    return MaskedFill.apply(a, tensor_class._from_op(m, None), value)


def index_range(array) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer array, with one device read for a CuPy array.

    NumPy raises on an out-of-range index but wraps a negative one, and CuPy wraps both
    silently, so ops that take index tensors check the range first, as torch does.
    """
    if isinstance(array, np.ndarray):
        return int(array.min()), int(array.max())
    low, high = get_array_module(array).stack((array.min(), array.max())).tolist()
    return int(low), int(high)


def _index_array(index, op: str, what: str):
    tensor_class = tensor_type.Tensor
    array = index.array if isinstance(index, tensor_class) else np.asarray(index)
    if array.dtype not in (np.int32, np.int64):
        raise RuntimeError(f"{op}(): Expected dtype int32{what}int64 for index, got "
                           f"{array.dtype}")
    return array


def gather(a, dim, index):
    """``out[i][j] = a[i][index[i][j]]`` (for ``dim=1``); torch's shape and bounds checks."""
    d = normalize_dim(dim, a.ndim)
    idx = _index_array(index, "gather", "/")
    if idx.ndim != a.ndim and not (idx.ndim <= 1 and a.ndim <= 1):
        raise RuntimeError(
            f"Index tensor must have the same number of dimensions as input tensor (index "
            f"shape {tuple(idx.shape)}, input shape {tuple(a.shape)})"
        )
    shape = tuple(a.array.shape) or (1,)
    idx_shape = tuple(idx.shape) or (1,)
    if any(idx_shape[k] > shape[k] for k in range(len(shape)) if k != d):
        raise RuntimeError(
            f"Size does not match at dimension "
            f"{next(k for k in range(len(shape)) if k != d and idx_shape[k] > shape[k])} "
            f"expected index {list(idx.shape)} to be no larger than self {list(a.shape)} apart "
            f"from dimension {d}"
        )
    if idx.size:
        low, high = index_range(idx)
        if low < 0 or high >= shape[d]:
            raise RuntimeError(f"index {low if low < 0 else high} is out of bounds for "
                               f"dimension {d} with size {shape[d]}")
    src = a.reshape(1) if a.ndim == 0 else a  # torch treats a scalar as a 1-element vector
    if a.ndim > 1 and idx_shape != shape:
        # take_along_axis would broadcast a smaller index over ``a``; torch reads only the
        # leading part of the other dims.
        src = getitem(a, tuple(slice(None) if k == d else slice(0, idx_shape[k])
                               for k in range(a.ndim)))
    out = Gather.apply(src, d, idx.reshape(idx_shape).astype(np.int64, copy=False))
    return out.reshape(()) if idx.ndim == 0 else out


def index_select(a, dim, index):
    """The entries of ``a`` at the positions ``index`` (1-D, int32/int64) along ``dim``."""
    d = normalize_dim(dim, a.ndim)
    idx = _index_array(index, "index_select", " or ")
    if idx.ndim > 1:
        raise IndexError(f"index_select(): Index is supposed to be a vector, got shape "
                         f"{tuple(idx.shape)}")
    size = a.array.shape[d] if a.ndim else 1
    if a.ndim == 0 and idx.size != 1:
        raise RuntimeError(f"index_select(): Index to scalar can have only 1 value, got "
                           f"{idx.size} value(s)")
    if idx.size and size == 0:
        raise RuntimeError(f"index_select(): self indexing axis dim should be positive (dim "
                           f"{d} of input shape {tuple(a.shape)} is empty)")
    if idx.size:
        low, high = index_range(idx)
        if low < 0 or high >= size:
            raise IndexError(
                f"index out of range in self: index_select() got index "
                f"{low if low < 0 else high} for dimension {d} of size {size} (input shape "
                f"{tuple(a.shape)})"
            )
    if a.ndim == 0:
        return IndexSelect.apply(a.reshape(1), 0, idx.reshape(1)).reshape(())
    return IndexSelect.apply(a, d, idx.reshape(-1))


def maximum(a, b):
    a, b = binary_operands(a, b)
    return Maximum.apply(a, b, True)


def minimum(a, b):
    a, b = binary_operands(a, b)
    return Maximum.apply(a, b, False)
