"""Binary arithmetic with broadcasting: ``+ - * / ** @`` and friends."""

from __future__ import annotations

import numpy as np

from ddp import dtypes, kernels
from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import unbroadcast
from ddp.ops.promotion import binary_operands, cast_tensor
from ddp.ops.unary import trunc


class Add(Function):
    @staticmethod
    def forward(ctx, a, b, alpha=1):
        ctx.shapes = (a.shape, b.shape)
        ctx.alpha = alpha
        return a + b if alpha == 1 else a + alpha * b

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        gb = grad if ctx.alpha == 1 else grad * ctx.alpha
        return unbroadcast(grad, sa), unbroadcast(gb, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b, alpha=1):
        ctx.shapes = (a.shape, b.shape)
        ctx.alpha = alpha
        return a - b if alpha == 1 else a - alpha * b

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        return unbroadcast(grad, sa), unbroadcast(-grad if ctx.alpha == 1 else grad * -ctx.alpha,
                                                  sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a if ctx.needs_input_grad[1:2] == (True,) else None,
                              b if ctx.needs_input_grad[:1] == (True,) else None)
        ctx.shapes = (a.shape, b.shape)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = unbroadcast(grad * b, sa) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(grad * a, sb) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a if ctx.needs_input_grad[1:2] == (True,) else None, b)
        ctx.shapes = (a.shape, b.shape)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = unbroadcast(grad / b, sa) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-grad * a / (b * b), sb) if ctx.needs_input_grad[1] else None
        return ga, gb


class PowScalar(Function):
    backward_name = "PowBackward0"

    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        if exponent == 2:
            return a * a
        return a**exponent

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        p = ctx.exponent
        if p == 2:
            return grad * (2 * a), None
        if p == 0:
            return grad * 0, None
        return grad * (p * a ** (p - 1)), None


class Pow(Function):
    backward_name = "PowBackward1"

    @staticmethod
    def forward(ctx, a, b):
        out = a**b
        ctx.save_for_backward(a, b, out)
        ctx.shapes = (a.shape, b.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved_tensors
        sa, sb = ctx.shapes
        xp = get_array_module(a)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(grad * b * xp.where(b == 0, 1, a) ** (b - 1) * (b != 0), sa)
        if ctx.needs_input_grad[1]:
            safe_log = xp.log(xp.where(a > 0, a, 1))
            gb = unbroadcast(grad * out * xp.where(a > 0, safe_log, 0), sb)
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return (-grad,)


class MatMul(Function):
    def name(self) -> str:
        ranks = tuple(len(s) for s in self.shapes)
        return {(2, 2): "MmBackward0", (1, 1): "DotBackward0", (2, 1): "MvBackward0"}.get(
            ranks, "MatmulBackward0")

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise RuntimeError("both arguments to matmul need to be at least 1D, got "
                               f"{a.ndim}D and {b.ndim}D")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise RuntimeError(
                f"mat1 and mat2 shapes cannot be multiplied ({_shape_text(a)} and "
                f"{_shape_text(b)})"
            )
        ctx.save_for_backward(a if ctx.needs_input_grad[1:2] == (True,) else None,
                              b if ctx.needs_input_grad[:1] == (True,) else None)
        ctx.shapes = (a.shape, b.shape)
        return _matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        xp = get_array_module(grad)
        if len(sa) == 1 and len(sb) == 1:  # dot product
            return (grad * b if ctx.needs_input_grad[0] else None,
                    grad * a if ctx.needs_input_grad[1] else None)
        # Lift 1-D operands to matrices, as matmul itself does, then undo at the end.
        g = grad
        if len(sa) == 1:
            g = xp.expand_dims(g, -2)
        if len(sb) == 1:
            g = xp.expand_dims(g, -1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            b2 = b.reshape(-1, 1) if b.ndim == 1 else b
            ga = _matmul(g, xp.swapaxes(b2, -1, -2))
            if len(sa) == 1:
                ga = ga.reshape(ga.shape[:-2] + (ga.shape[-1],))
            ga = unbroadcast(ga, sa)
        if ctx.needs_input_grad[1]:
            a2 = a.reshape(1, -1) if a.ndim == 1 else a
            if len(sb) <= 2 and a2.ndim > 2:
                # A batch of inputs against one matrix (Linear on 3-D input): one GEMM.
                gb = a2.reshape(-1, a2.shape[-1]).T @ g.reshape(-1, g.shape[-1])
            else:
                gb = unbroadcast(_matmul(xp.swapaxes(a2, -1, -2), g), (
                    sb if len(sb) > 1 else sb + (1,)))
            if len(sb) == 1:
                gb = gb.reshape(gb.shape[:-1])
        return ga, gb


def _matmul(a, b):
    """``a @ b``, folding the batch of ``a`` into one GEMM when ``b`` is a single matrix."""
    if a.ndim > 2 and b.ndim == 2:
        out = kernels.matmul(a.reshape(-1, a.shape[-1]), b)
        return out.reshape(a.shape[:-1] + (b.shape[-1],))
    return kernels.matmul(a, b)


def _shape_text(a) -> str:
    return "x".join(str(s) for s in (a.shape if a.ndim > 1 else (1,) + a.shape))


def _check_integer_divisor(a, b) -> None:
    """torch raises for an integer division by zero; NumPy would warn and return 0."""
    if a.dtype.kind in "iub" and b.dtype.kind in "iub" and a.size and b.size:
        if (b == 0).any():
            raise RuntimeError("ZeroDivisionError")


class FloorDivide(Function):
    """``a // b`` (``rounding_mode="floor"``) or ``trunc(a / b)`` on integers (``"trunc"``)."""

    @staticmethod
    def forward(ctx, a, b, rounding_mode="floor"):
        _check_integer_divisor(a, b)
        xp = get_array_module(a)
        with np.errstate(divide="ignore", invalid="ignore"):  # floats give inf/nan, silently
            q = xp.floor_divide(a, b)
        if rounding_mode == "trunc":
            # Exact on integers (a float quotient would round int64 values past 2**53):
            # floor and trunc differ by one where the division is inexact and the quotient
            # is negative.
            inexact = (a - q * b) != 0
            q = q + (inexact & ((a < 0) != (b < 0))).astype(q.dtype)
        return q

    @staticmethod
    def backward(ctx, grad):
        return None, None, None


class Remainder(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_integer_divisor(a, b)
        ctx.shapes = (a.shape, b.shape)
        ctx.save_for_backward(a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            return get_array_module(a).remainder(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        xp = get_array_module(a)
        gb = -grad * xp.floor_divide(a, b) if ctx.needs_input_grad[1] else None
        return unbroadcast(grad, ctx.shapes[0]), (
            None if gb is None else unbroadcast(gb, ctx.shapes[1]))


def add(a, b, alpha=1):
    """``a + alpha * b`` with broadcasting."""
    a, b = binary_operands(a, b)
    return Add.apply(a, b, alpha=alpha)


def sub(a, b, alpha=1):
    """``a - alpha * b`` with broadcasting."""
    a, b = binary_operands(a, b)
    return Sub.apply(a, b, alpha=alpha)


def mul(a, b):
    a, b = binary_operands(a, b)
    return Mul.apply(a, b)


def div(a, b, rounding_mode=None):
    """True division; integer operands give the default float dtype, as in torch."""
    if rounding_mode not in (None, "trunc", "floor"):
        raise RuntimeError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' "
                           f"but found {rounding_mode!r}")
    a, b = binary_operands(a, b)
    if rounding_mode == "floor":
        return FloorDivide.apply(a, b)
    if rounding_mode == "trunc":
        if a.array.dtype.kind in "iu":  # integers stay integers, as in torch
            return FloorDivide.apply(a, b, "trunc")
        return trunc(div(a, b))
    if not dtypes.is_floating(a.array.dtype):
        a = cast_tensor(a, dtypes.default_float.np_dtype)
        b = cast_tensor(b, dtypes.default_float.np_dtype)
    return Div.apply(a, b)


def floor_divide(a, b):
    a, b = binary_operands(a, b)
    return FloorDivide.apply(a, b)


def remainder(a, b):
    a, b = binary_operands(a, b)
    return Remainder.apply(a, b)


@autocast_op("pow")
def pow(a, b):  # noqa: A001
    """``a ** b``: a tensor to a Python number, a number to a tensor, or tensor to tensor."""
    if (isinstance(a, tensor_type.Tensor) and isinstance(b, (int, float))
            and not isinstance(b, bool)):
        if isinstance(b, float) and not dtypes.is_floating(a.array.dtype):
            a = cast_tensor(a, dtypes.default_float.np_dtype)
        return PowScalar.apply(a, b)
    a, b = binary_operands(a, b)
    return Pow.apply(a, b)


def neg(a):
    return Neg.apply(a)


@autocast_op("matmul")
def matmul(a, b):
    """Matrix product with NumPy's/torch's batching and 1-D rules."""
    tensor_class = tensor_type.Tensor
    if not isinstance(a, tensor_class) or not isinstance(b, tensor_class):
        raise TypeError(
            f"matmul expects tensors, got {type(a).__name__} and {type(b).__name__}"
        )
    if a.dtype != b.dtype:
        # torch refuses rather than promoting: float32 @ int64 would silently give float32
        # results from truncated or upcast operands.
        raise RuntimeError(
            f"expected m1 and m2 to have the same dtype, but got: {a.dtype} != {b.dtype} "
            f"(shapes {tuple(a.shape)} and {tuple(b.shape)})"
        )
    a, b = binary_operands(a, b)
    return MatMul.apply(a, b)


@autocast_op("mm")
def mm(a, b):
    if a.ndim != 2 or b.ndim != 2:
        raise RuntimeError(f"mm expects 2-D tensors, got {a.ndim}-D and {b.ndim}-D")
    return matmul(a, b)


@autocast_op("bmm")
def bmm(a, b):
    if a.ndim != 3 or b.ndim != 3:
        raise RuntimeError(f"bmm expects 3-D tensors, got {a.ndim}-D and {b.ndim}-D")
    return matmul(a, b)


_ = np  # NumPy is the reference backend; kept for readers of this module
