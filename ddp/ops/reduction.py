"""Reductions (``sum mean max min var std argmax ...``) and the softmax family."""

from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from ddp import dtypes, kernels
from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.kernels import reference
from ddp.ops._util import normalize_dim, normalize_dims
from ddp.ops.promotion import cast_tensor
from ddp.ops.selection import maximum, minimum
from ddp.ops.unary import sqrt

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _expand_back(grad, shape, axes, keepdim):
    """Reshape a reduced gradient so it broadcasts against the input of ``shape``."""
    xp = get_array_module(grad)
    if axes is None:
        return xp.broadcast_to(grad.reshape((1,) * len(shape)), shape)
    if not keepdim:
        grad = xp.expand_dims(grad, axes)
    return xp.broadcast_to(grad, shape)


class Sum(Function):
    def name(self) -> str:
        return "SumBackward0" if self.axes is None else "SumBackward1"

    @staticmethod
    def forward(ctx, a, axes, keepdim):
        ctx.shape = a.shape
        ctx.axes = axes
        ctx.keepdim = keepdim
        return a.sum(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, grad):
        return _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim), None, None


class Mean(Function):
    def name(self) -> str:
        return "MeanBackward0" if self.axes is None else "MeanBackward1"

    @staticmethod
    def forward(ctx, a, axes, keepdim):
        ctx.shape = a.shape
        ctx.axes = axes
        ctx.keepdim = keepdim
        count = a.size if axes is None else int(np.prod([a.shape[d] for d in axes]))
        ctx.count = count
        return a.mean(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, grad):
        g = grad / ctx.count if ctx.count else grad
        return _expand_back(g, ctx.shape, ctx.axes, ctx.keepdim), None, None


class Var(Function):
    @staticmethod
    def forward(ctx, a, axes, correction, keepdim):
        mean = a.mean(axis=axes, keepdims=True)
        centered = a - mean
        count = a.size if axes is None else int(np.prod([a.shape[d] for d in axes]))
        denom = builtins.max(count - correction, 0)
        ctx.save_for_backward(centered)
        ctx.denom = denom
        ctx.axes = axes
        ctx.keepdim = keepdim
        out = (centered * centered).sum(axis=axes, keepdims=keepdim)
        return out / denom if denom else out * float("nan")

    @staticmethod
    def backward(ctx, grad):
        (centered,) = ctx.saved_tensors
        g = _expand_back(grad, centered.shape, ctx.axes, ctx.keepdim)
        return g * (2 / ctx.denom) * centered if ctx.denom else g * float("nan"), None, None, None


class MaxMin(Function):
    """Full reduction to the max/min: the gradient is shared evenly among ties (torch's rule)."""

    def name(self) -> str:
        return "MaxBackward1" if self.take_max else "MinBackward1"

    @staticmethod
    def forward(ctx, a, take_max):
        out = a.max() if take_max else a.min()
        ctx.take_max = take_max
        ctx.save_for_backward(a, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        mask = (a == out).astype(grad.dtype)
        return grad * mask / mask.sum(), None


class AMaxAMin(Function):
    """``amax``/``amin`` over dims: ties share the gradient evenly."""

    def name(self) -> str:
        return "AmaxBackward0" if self.take_max else "AminBackward0"

    @staticmethod
    def forward(ctx, a, axes, keepdim, take_max):
        out = a.max(axis=axes, keepdims=True) if take_max else a.min(axis=axes, keepdims=True)
        ctx.save_for_backward(a, out)
        ctx.axes = axes
        ctx.keepdim = keepdim
        ctx.take_max = take_max
        return out if keepdim else out.squeeze(axis=axes)

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        mask = (a == out).astype(grad.dtype)
        g = _expand_back(grad, a.shape, ctx.axes, ctx.keepdim)
        return g * mask / mask.sum(axis=ctx.axes, keepdims=True), None, None, None


class MaxMinDim(Function):
    """``max(dim)``/``min(dim)``: the gradient goes to the index returned."""

    def name(self) -> str:
        return "MaxBackward0" if self.take_max else "MinBackward0"

    @staticmethod
    def forward(ctx, a, dim, keepdim, take_max):
        xp = get_array_module(a)
        idx = xp.argmax(a, axis=dim) if take_max else xp.argmin(a, axis=dim)
        idx_k = xp.expand_dims(idx, dim)
        values = xp.take_along_axis(a, idx_k, axis=dim)
        ctx.shape = a.shape
        ctx.dim = dim
        ctx.keepdim = keepdim
        ctx.take_max = take_max
        ctx.save_for_backward(idx_k)
        ctx.indices = idx_k if keepdim else idx
        return values if keepdim else values.squeeze(axis=dim)

    @staticmethod
    def backward(ctx, grad):
        (idx_k,) = ctx.saved_tensors
        xp = get_array_module(grad)
        g = grad if ctx.keepdim else xp.expand_dims(grad, ctx.dim)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        xp.put_along_axis(out, idx_k, g, axis=ctx.dim)
        return out, None, None, None


class Softmax(Function):
    """The maths is ``ddp.kernels``': over the last dim, rows of a 2-D view (one launch on a
    GPU); over another dim, the reference along that axis (no fused kernel for it)."""

    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        if a.ndim and dim in (-1, a.ndim - 1) and a.dtype.kind == "f":
            e = kernels.softmax_forward(a.reshape(-1, a.shape[-1])).reshape(a.shape)
        else:
            e = reference.softmax_forward(a, axis=dim)
        ctx.save_for_backward(e)
        return e

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        if y.ndim and ctx.dim in (-1, y.ndim - 1):
            c = y.shape[-1]
            return kernels.softmax_backward(grad.reshape(-1, c), y.reshape(-1, c)).reshape(
                y.shape), None
        return reference.softmax_backward(grad, y, axis=ctx.dim), None


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, dim):
        xp = get_array_module(a)
        shifted = a - a.max(axis=dim, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        xp = get_array_module(out)
        return grad - xp.exp(out) * grad.sum(axis=ctx.dim, keepdims=True), None


class LogSumExp(Function):
    backward_name = "LogsumexpBackward0"

    @staticmethod
    def forward(ctx, a, axes, keepdim):
        xp = get_array_module(a)
        m = a.max(axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        out = xp.log(xp.exp(a - m).sum(axis=axes, keepdims=True)) + m
        ctx.save_for_backward(a, out)
        ctx.axes = axes
        ctx.keepdim = keepdim
        return out if keepdim else out.squeeze(axis=axes)

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        xp = get_array_module(a)
        g = _expand_back(grad, a.shape, ctx.axes, ctx.keepdim)
        return g * xp.exp(a - out), None, None


def _reduce_dtype(a):
    """Sums of bool/int tensors are int64, as in torch."""
    if a.array.dtype.kind in "bu" or a.array.dtype in (np.int8, np.int16, np.int32):
        return cast_tensor(a, np.int64)
    return a


@autocast_op("sum")
def sum(a, dim=None, keepdim=False, dtype=None):  # noqa: A001
    a = _maybe_cast(a, dtype) if dtype is not None else _reduce_dtype(a)
    return Sum.apply(a, normalize_dims(dim, a.ndim), keepdim)


def mean(a, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        a = _maybe_cast(a, dtype)
    if not dtypes.is_floating(a.array.dtype):
        raise RuntimeError(
            f"mean(): could not infer output dtype. Input dtype must be either a floating point "
            f"or complex dtype. Got: {a.dtype.name.capitalize()}"
        )
    return Mean.apply(a, normalize_dims(dim, a.ndim), keepdim)


def var(a, dim=None, unbiased=None, keepdim=False, correction=None):
    """Variance; ``unbiased=True``/``correction=1`` (Bessel) is the default, as in torch."""
    if isinstance(dim, bool):  # var(unbiased) positional form
        unbiased, dim = dim, None
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    return Var.apply(a, normalize_dims(dim, a.ndim), correction, keepdim)


def std(a, dim=None, unbiased=None, keepdim=False, correction=None):
    return sqrt(var(a, dim, unbiased=unbiased, keepdim=keepdim, correction=correction))


def max(a, dim=None, keepdim=False):  # noqa: A001
    """``max(a)`` → the largest value; ``max(a, dim)`` → ``(values, indices)``;
    ``max(a, other_tensor)`` → element-wise maximum."""
    return _max_min(a, dim, keepdim, True)


def min(a, dim=None, keepdim=False):  # noqa: A001
    return _max_min(a, dim, keepdim, False)


def _check_reduced_dims(name: str, a, axes, error=RuntimeError) -> None:
    """torch's errors for a max/min/argmax over nothing (NumPy's say "no identity")."""
    if a.array.size and axes is not None:
        return
    if axes is None:
        if a.array.size == 0:
            raise error(f"{name}(): Expected reduction dim to be specified for input.numel() "
                        f"== 0. Specify the reduction dim with the 'dim' argument.")
        return
    for d in axes:
        if a.ndim and a.array.shape[d] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")


def _max_min(a, dim, keepdim, take_max):
    if isinstance(dim, tensor_type.Tensor):
        return maximum(a, dim) if take_max else minimum(a, dim)
    name = "max" if take_max else "min"
    if dim is None:
        _check_reduced_dims(name, a, None)
        return MaxMin.apply(a, take_max)
    d = normalize_dim(dim, a.ndim)
    _check_reduced_dims(name, a, (d,))
    values = MaxMinDim.apply(a, d, keepdim, take_max)
    node = values.grad_fn
    if node is None:  # no graph: recompute the indices directly
        xp = get_array_module(a.array)
        idx = xp.argmax(a.array, axis=d) if take_max else xp.argmin(a.array, axis=d)
        idx = xp.expand_dims(idx, d) if keepdim else idx
    else:
        idx = node.indices
    indices = tensor_type.Tensor._from_op(idx.astype(np.int64, copy=False), None)
    return ValuesIndices(values, indices)


def amax(a, dim=None, keepdim=False):
    axes = normalize_dims(dim, a.ndim)
    _check_reduced_dims("amax", a, axes)
    return AMaxAMin.apply(a, axes, keepdim, True)


def amin(a, dim=None, keepdim=False):
    axes = normalize_dims(dim, a.ndim)
    _check_reduced_dims("amin", a, axes)
    return AMaxAMin.apply(a, axes, keepdim, False)


def argmax(a, dim=None, keepdim=False):
    return _arg(a, dim, keepdim, True)


def argmin(a, dim=None, keepdim=False):
    return _arg(a, dim, keepdim, False)


def _arg(a, dim, keepdim, take_max):
    tensor_class = tensor_type.Tensor
    xp = get_array_module(a.array)
    fn = xp.argmax if take_max else xp.argmin
    name = "argmax" if take_max else "argmin"
    if dim is None:
        _check_reduced_dims(name, a, None, IndexError)
        out = fn(a.array)
        if keepdim:
            out = xp.asarray(out).reshape((1,) * a.ndim)
    else:
        d = normalize_dim(dim, a.ndim)
        _check_reduced_dims(name, a, (d,))
        out = fn(a.array, axis=d)
        if keepdim:
            out = xp.expand_dims(out, d)
    return tensor_class._from_op(xp.asarray(out).astype(np.int64, copy=False), None)


@autocast_op("softmax")
def softmax(a, dim=None, dtype=None):
    if dtype is not None:
        a = _maybe_cast(a, dtype)
    _check_floating(a, "softmax")
    return Softmax.apply(a, _softmax_dim(a, dim))


@autocast_op("log_softmax")
def log_softmax(a, dim=None, dtype=None):
    if dtype is not None:
        a = _maybe_cast(a, dtype)
    _check_floating(a, "log_softmax")
    return LogSoftmax.apply(a, _softmax_dim(a, dim))


def _check_floating(a, name: str) -> None:
    if not dtypes.is_inexact(a.array.dtype):
        # NumPy would fail deep inside with a ufunc casting error.
        raise NotImplementedError(
            f"{name} is not implemented for {a.dtype} input of shape {tuple(a.shape)}; "
            f"pass a floating tensor or dtype=ddp.float32"
        )


@autocast_op("logsumexp")
def logsumexp(a, dim, keepdim=False):
    return LogSumExp.apply(a, normalize_dims(dim, a.ndim), keepdim)


def _softmax_dim(a, dim):
    if dim is None:
        dim = 0 if a.ndim in (0, 1, 3) else 1  # torch's legacy implicit choice
    return normalize_dim(dim, a.ndim)


def _maybe_cast(a, dtype):
    np_dtype = dtypes.to_numpy_dtype(dtype)
    return a if a.array.dtype == np_dtype else cast_tensor(a, np_dtype)
