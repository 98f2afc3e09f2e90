"""Element-wise activations (SiLU, Mish, LeakyReLU, ELU, Softplus, Hardtanh, PReLU) and
channel-wise dropout: each forward beside its derivative.

The formulas, and the side a kink belongs to, are torch's CPU kernels': the gradient at a kink
is the one ``aten`` returns (``leaky_relu`` and ``elu`` take the negative side at 0,
``hardtanh`` passes nothing at either bound). Arrays are NumPy or CuPy (``xp``); scalars are
Python floats, so float32 stays float32.
"""

from __future__ import annotations

from ddp import random
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.device import device_of, move_array
from ddp.ops._util import unbroadcast


def _sigmoid(xp, x):
    """``1 / (1 + exp(-x))`` without overflow on either tail, in the dtype of ``x``."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _softplus(xp, x):
    """``log(1 + exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))``: no overflow for large ``x``."""
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


class SiLU(Function):
    """``x * sigmoid(x)``; derivative ``s * (1 + x * (1 - s))``."""

    @staticmethod
    def forward(ctx, x):
        xp = get_array_module(x)
        s = _sigmoid(xp, x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        return grad * (s * (1 + x * (1 - s)))


class Mish(Function):
    """``x * tanh(softplus(x))``; derivative ``t + x * sigmoid(x) * (1 - t * t)``."""

    @staticmethod
    def forward(ctx, x):
        xp = get_array_module(x)
        t = xp.tanh(_softplus(xp, x))
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    def backward(ctx, grad):
        x, t = ctx.saved_tensors
        s = _sigmoid(get_array_module(x), x)
        return grad * (t + x * s * (1 - t * t))


class LeakyReLU(Function):
    """``x`` where ``x > 0``, else ``negative_slope * x`` (0 takes the negative side)."""

    @staticmethod
    def forward(ctx, x, negative_slope):
        xp = get_array_module(x)
        positive = x > 0
        ctx.save_for_backward(positive)
        ctx.slope = negative_slope
        return xp.where(positive, x, x * negative_slope)

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved_tensors
        return get_array_module(grad).where(positive, grad, grad * ctx.slope), None


class ELU(Function):
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``; derivative ``alpha * exp(x)``."""

    @staticmethod
    def forward(ctx, x, alpha):
        xp = get_array_module(x)
        positive = x > 0
        negative = alpha * xp.expm1(xp.minimum(x, 0))  # no overflow where the branch is unused
        ctx.save_for_backward(positive, negative)
        ctx.alpha = alpha
        return xp.where(positive, x, negative)

    @staticmethod
    def backward(ctx, grad):
        positive, negative = ctx.saved_tensors
        # alpha * exp(x) == negative + alpha, from the saved output's branch
        return get_array_module(grad).where(positive, grad, grad * (negative + ctx.alpha)), None


class Softplus(Function):
    """``log(1 + exp(beta * x)) / beta``, or ``x`` where ``beta * x > threshold``."""

    @staticmethod
    def forward(ctx, x, beta, threshold):
        xp = get_array_module(x)
        bx = x * beta
        linear = bx > threshold
        ctx.save_for_backward(bx, linear)
        return xp.where(linear, x, _softplus(xp, bx) / beta)

    @staticmethod
    def backward(ctx, grad):
        bx, linear = ctx.saved_tensors
        xp = get_array_module(grad)
        return xp.where(linear, grad, grad * _sigmoid(xp, bx)), None, None


class Hardtanh(Function):
    """``clamp(x, min_val, max_val)``; the gradient passes strictly inside the bounds only."""

    @staticmethod
    def forward(ctx, x, min_val, max_val):
        xp = get_array_module(x)
        ctx.save_for_backward((x > min_val) & (x < max_val))
        return xp.minimum(xp.maximum(x, min_val), max_val).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class PReLU(Function):
    """``x`` where ``x > 0``, else ``weight * x``; ``weight`` broadcasts along the channel dim.

    ``weight`` arrives already shaped to broadcast (``(C, 1, ...)`` or ``(1,)``); its gradient
    is summed back to that shape.
    """

    @staticmethod
    def forward(ctx, x, weight):
        xp = get_array_module(x)
        positive = x > 0
        ctx.save_for_backward(x, weight, positive)
        return xp.where(positive, x, weight * x)

    @staticmethod
    def backward(ctx, grad):
        x, weight, positive = ctx.saved_tensors
        xp = get_array_module(grad)
        gx = xp.where(positive, grad, weight * grad) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            gw = unbroadcast(xp.where(positive, 0, x * grad).astype(grad.dtype, copy=False),
                             weight.shape)
        return gx, gw


class FeatureDropout(Function):
    """Zero whole channels (one draw per ``(sample, channel)``), scale the rest by
    ``1 / (1 - p)``: ``mask_shape`` is the input's shape with 1 past the channel dim."""

    @staticmethod
    def forward(ctx, x, p, mask_shape, generator):
        keep = random.uniform_array(mask_shape, 0.0, 1.0, x.dtype, generator) >= p
        scale = keep.astype(x.dtype)
        scale *= 1.0 / (1.0 - p)
        if device_of(x).type != "cpu":
            scale = move_array(scale, device_of(x))
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None, None
