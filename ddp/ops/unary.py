"""Element-wise functions of one tensor, each with its derivative beside it."""

from __future__ import annotations

from ddp import dtypes, kernels
from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops.promotion import cast_tensor
from ddp.ops.selection import maximum, minimum


def _float_input(a):
    """Integer tensors become the default float dtype before a transcendental function."""
    if a.array.dtype.kind in "biu":
        return cast_tensor(a, dtypes.default_float.np_dtype)
    return a


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = get_array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return get_array_module(a).log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = get_array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad / (2 * out)


class Rsqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = 1 / get_array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (-0.5 * out * out * out)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return get_array_module(a).abs(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad * get_array_module(a).sign(a)


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = get_array_module(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        xp = get_array_module(a)
        # Numerically stable on both tails: exp of a non-positive number only.
        e = xp.exp(-xp.abs(a))
        out = xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out * (1 - out)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        out = kernels.relu_forward(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return kernels.relu_backward(grad, out)


class Clamp(Function):
    backward_name = "ClampBackward1"

    @staticmethod
    def forward(ctx, a, lo, hi):
        xp = get_array_module(a)
        ctx.save_for_backward(a)
        ctx.bounds = (lo, hi)
        out = a
        if lo is not None:
            out = xp.maximum(out, lo)
        if hi is not None:
            out = xp.minimum(out, hi)
        return out.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        mask = True
        if lo is not None:
            mask = mask & (a >= lo)
        if hi is not None:
            mask = mask & (a <= hi)
        return grad * mask, None, None


class Sin(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return get_array_module(a).sin(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad * get_array_module(a).cos(a)


class Cos(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return get_array_module(a).cos(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return -grad * get_array_module(a).sin(a)


class Piecewise(Function):
    """floor, ceil, round, trunc, sign: zero gradient almost everywhere."""

    @staticmethod
    def forward(ctx, a, name):
        return getattr(get_array_module(a), name)(a)

    @staticmethod
    def backward(ctx, grad):
        return grad * 0, None


@autocast_op("exp")
def exp(a):
    return Exp.apply(_float_input(a))


@autocast_op("log")
def log(a):
    return Log.apply(_float_input(a))


def sqrt(a):
    return Sqrt.apply(_float_input(a))


@autocast_op("rsqrt")
def rsqrt(a):
    return Rsqrt.apply(_float_input(a))


def abs(a):  # noqa: A001
    return Abs.apply(a)


def tanh(a):
    return Tanh.apply(_float_input(a))


def sigmoid(a):
    return Sigmoid.apply(_float_input(a))


def relu(a):
    return Relu.apply(a)


def clamp(a, min=None, max=None):  # noqa: A002
    """Clip to ``[min, max]``; the gradient passes where the input lies within the bounds."""
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    if isinstance(min, tensor_type.Tensor) or isinstance(max, tensor_type.Tensor):
        out = a
        if min is not None:
            out = maximum(out, min)
        if max is not None:
            out = minimum(out, max)
        return out
    return Clamp.apply(a, min, max)


def sin(a):
    return Sin.apply(_float_input(a))


def cos(a):
    return Cos.apply(_float_input(a))


def floor(a):
    return Piecewise.apply(a, "floor")


def ceil(a):
    return Piecewise.apply(a, "ceil")


def round(a):  # noqa: A001
    return Piecewise.apply(a, "round")


def trunc(a):
    return Piecewise.apply(a, "trunc")


def sign(a):
    return Piecewise.apply(a, "sign")
