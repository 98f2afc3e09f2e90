"""``scatter`` and ``scatter_add``: write (or add) values at indices along a dim.

For a 3-D ``index`` and ``dim=0``: ``out[index[i][j][k]][j][k] = src[i][j][k]`` for every
``(i, j, k)`` of ``index``'s shape (torch's definition); ``scatter_add`` sums where indices
repeat. The in-place forms are ``Tensor.scatter_`` and ``Tensor.scatter_add_``.
"""

from __future__ import annotations

import numpy as np

from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import normalize_dim


def _positions(xp, index, dim: int) -> tuple:
    """Advanced index of ``out`` addressed by each element of ``index``."""
    nd = index.ndim
    grid = [xp.arange(n).reshape(tuple(n if k == j else 1 for j in range(nd)))
            for k, n in enumerate(index.shape)]
    grid[dim] = index
    return tuple(grid)


class Scatter(Function):
    def name(self) -> str:
        return "ScatterAddBackward0" if self.add else (
            "ScatterBackward0" if self.src_shape is not None else "ScatterBackward1")

    @staticmethod
    def forward(ctx, a, src, dim, index, add):
        xp = get_array_module(a)
        where = _positions(xp, index, dim)
        region = tuple(slice(0, n) for n in index.shape)
        out = a.copy()
        is_array = hasattr(src, "shape")
        values = src[region] if is_array else src
        if add:
            xp.add.at(out, where, values)
        else:
            out[where] = values
        ctx.where, ctx.region, ctx.add = where, region, add
        ctx.src_shape = src.shape if is_array else None
        return out

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        ga = gs = None
        if ctx.needs_input_grad[0]:
            ga = grad
            if not ctx.add:  # overwritten positions take nothing from the input
                ga = grad.copy()
                ga[ctx.where] = 0
        if ctx.src_shape is not None and ctx.needs_input_grad[1]:
            gs = xp.zeros(ctx.src_shape, dtype=grad.dtype)
            gs[ctx.region] = grad[ctx.where]
        return ga, gs, None, None, None


def _check(name: str, a, dim: int, index, src) -> None:
    tensor_class = tensor_type.Tensor
    if not isinstance(index, tensor_class) or index.array.dtype not in (np.int32, np.int64):
        got = index.dtype if isinstance(index, tensor_class) else type(index).__name__
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index, got {got}")
    if index.ndim != a.ndim:
        raise RuntimeError(f"{name}(): Index tensor must have the same number of dimensions as "
                           f"self tensor ({index.ndim} vs {a.ndim})")
    src_shape = tuple(src.shape) if isinstance(src, tensor_class) else None
    if isinstance(src, tensor_class) and src.array.dtype != a.array.dtype:
        raise RuntimeError(f"{name}(): Expected self.dtype to be equal to src.dtype (got "
                           f"{a.dtype} and {src.dtype})")
    ishape, shape = tuple(index.shape), tuple(a.shape)
    too_big = any(n > s for d, (n, s) in enumerate(zip(ishape, shape, strict=True)) if d != dim)
    if too_big or (src_shape is not None and any(
            n > s for n, s in zip(ishape, src_shape, strict=True))):
        raise RuntimeError(f"Expected index {list(ishape)} to be no larger than self "
                           f"{list(shape)} apart from dimension {dim}" + (
                               f" and to be no larger size than src {list(src_shape)}"
                               if src_shape is not None else ""))
    if index.array.size:
        lo, hi = int(index.array.min()), int(index.array.max())
        bad = hi if hi >= shape[dim] else lo if lo < -shape[dim] else None
        if bad is not None:
            raise RuntimeError(f"index {bad} is out of bounds for dimension {dim} with size "
                               f"{shape[dim]}")


def scatter(input, dim: int, index, src=None, value=None, *, reduce=None):  # noqa: A002
    """A copy of ``input`` with ``src`` (a tensor, or the number ``value``) written at ``index``.

    ``reduce="add"`` adds instead (as ``scatter_add``); ``reduce="multiply"`` is not supported.
    """
    if src is None:
        src = value
    if src is None:
        raise TypeError("scatter() missing 1 required argument: 'src' or 'value'")
    if reduce not in (None, "add"):
        raise NotImplementedError(f"scatter(reduce={reduce!r}) is not supported by ddp; "
                                  f"use reduce='add' or scatter_add")
    d = normalize_dim(dim, input.ndim)
    _check("scatter", input, d, index, src)
    if isinstance(src, tensor_type.Tensor):
        return Scatter.apply(input, src, d, index.array, reduce == "add")
    if isinstance(src, bool) or not isinstance(src, (int, float)):
        raise TypeError(f"scatter(): value must be a number or a Tensor, got "
                        f"{type(src).__name__}")
    return Scatter.apply(input, src, d, index.array, False)


@autocast_op("scatter_add")
def scatter_add(input, dim: int, index, src):  # noqa: A002
    """A copy of ``input`` with ``src`` added at ``index`` (repeated indices add up)."""
    d = normalize_dim(dim, input.ndim)
    if not isinstance(src, tensor_type.Tensor):
        raise TypeError(f"scatter_add(): src must be a Tensor, got {type(src).__name__}")
    _check("scatter_add", input, d, index, src)
    return Scatter.apply(input, src, d, index.array, True)
