"""``Cast``: the differentiable dtype conversion (torch's ``ToCopyBackward0``).

It lives beside the engine, not in ``ddp.ops``, because autocast (``autocast_mode.py``) inserts
it at op dispatch; ``ddp.ops.cast`` is its public form.
"""

from __future__ import annotations

from ddp import dtypes
from ddp.autograd.function import Function


class Cast(Function):
    """``a.astype(np_dtype)``; the gradient goes back in ``a``'s dtype (None for non-floats)."""

    backward_name = "ToCopyBackward0"
    storage_only = True  # converts bfloat16 itself: widening its input first would be a no-op

    @staticmethod
    def forward(ctx, a, np_dtype):
        ctx.dtype = a.dtype
        return a.astype(np_dtype)

    @staticmethod
    def backward(ctx, grad):
        if not dtypes.is_floating(ctx.dtype):
            return None, None
        return grad.astype(ctx.dtype), None
