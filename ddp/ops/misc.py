"""Casts, copies and device moves, differentiable so they can sit inside a model."""

from __future__ import annotations

from ddp import dtypes
from ddp.autograd import tensor_type
from ddp.autograd.cast import Cast
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.device import device_of, move_array
from ddp.ops._util import unbroadcast


class ToDevice(Function):
    storage_only = True

    @staticmethod
    def forward(ctx, a, target):
        ctx.source = device_of(a)
        return move_array(a, target)

    @staticmethod
    def backward(ctx, grad):
        return move_array(grad, ctx.source), None


class Clone(Function):
    storage_only = True

    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, grad):
        return grad


class CopyInto(Function):
    """``dst.copy_(src)`` inside a graph: the result has dst's shape/dtype and src's values."""

    @staticmethod
    def forward(ctx, dst, src):
        xp = get_array_module(dst)
        ctx.src_shape = src.shape
        ctx.src_dtype = src.dtype
        out = xp.empty_like(dst)
        out[...] = src
        return out

    @staticmethod
    def backward(ctx, grad):
        return None, unbroadcast(grad, ctx.src_shape).astype(ctx.src_dtype, copy=False)


class FullLike(Function):
    @staticmethod
    def forward(ctx, a, value):
        return get_array_module(a).full_like(a, value)

    @staticmethod
    def backward(ctx, grad):
        return None, None


def cast(a, np_dtype):
    """``a`` converted to ``np_dtype``; only a floating result stays in the graph (as torch)."""
    if not dtypes.is_floating(np_dtype) and a.requires_grad:
        return tensor_type.Tensor._from_op(a.array.astype(np_dtype), None)
    return Cast.apply(a, np_dtype)


def to_device(a, target):
    return ToDevice.apply(a, target)


def clone(a):
    return Clone.apply(a)


def copy_into(dst, src):
    if src.array.dtype != dst.array.dtype:
        src = cast(src, dst.array.dtype)
    return CopyInto.apply(dst, src)


def full_like_graph(a, value):
    return FullLike.apply(a, value)
