"""Products built from ``matmul``: ``outer``, ``addmm``, ``baddbmm`` (torch composes them too)."""

from __future__ import annotations

import numpy as np

from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.ops.arithmetic import add, matmul, mul
from ddp.ops.compare import isfinite
from ddp.ops.selection import masked_fill
from ddp.ops.views import reshape


def outer(input, vec2):  # noqa: A002
    """``input[i] * vec2[j]`` for 1-D ``input`` and ``vec2``."""
    for name, t in (("self", input), ("vec2", vec2)):
        if not isinstance(t, tensor_type.Tensor) or t.ndim != 1:
            got = f"{t.ndim}-D" if isinstance(t, tensor_type.Tensor) else type(t).__name__
            raise RuntimeError(f"outer: Expected 1-D argument {name}, but got {got}")
    return mul(reshape(input, (-1, 1)), vec2)


ger = outer


def _scaled_sum(name: str, input, product, beta, alpha):  # noqa: A002
    """``beta * input + alpha * product``; ``beta=0`` ignores ``input`` (NaN and inf too)."""
    try:
        shape = np.broadcast_shapes(tuple(input.shape), tuple(product.shape))
    except ValueError:
        shape = None
    if shape != tuple(product.shape):
        raise RuntimeError(f"{name}: the input of shape {tuple(input.shape)} does not broadcast "
                           f"to the product's shape {tuple(product.shape)}")
    if beta == 0:
        return add(product if alpha == 1 else mul(product, alpha),
                   masked_fill(input, ~isfinite(input), 0), alpha=0)
    scaled = input if beta == 1 else mul(input, beta)
    return add(scaled, product, alpha=alpha)


def _check_rank(name: str, t, rank: int, what: str) -> None:
    if t.ndim != rank:
        raise RuntimeError(f"{name} must be a {what}, got {t.ndim}-D tensor")


@autocast_op("addmm")
def addmm(input, mat1, mat2, *, beta=1, alpha=1):  # noqa: A002
    """``beta * input + alpha * (mat1 @ mat2)``; ``input`` broadcasts to the product."""
    _check_rank("mat1", mat1, 2, "matrix")
    _check_rank("mat2", mat2, 2, "matrix")
    if mat1.shape[1] != mat2.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({mat1.shape[0]}x"
                           f"{mat1.shape[1]} and {mat2.shape[0]}x{mat2.shape[1]})")
    return _scaled_sum("addmm", input, matmul(mat1, mat2), beta, alpha)


@autocast_op("baddbmm")
def baddbmm(input, batch1, batch2, *, beta=1, alpha=1):  # noqa: A002
    """``beta * input + alpha * (batch1 @ batch2)`` over a batch of matrices."""
    _check_rank("batch1", batch1, 3, "3D tensor")
    _check_rank("batch2", batch2, 3, "3D tensor")
    b1, b2 = tuple(batch1.shape), tuple(batch2.shape)
    if b1[0] != b2[0] or b1[2] != b2[1]:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{b1[0]}, {b1[2]}] but got: [{b2[0]}, {b2[1]}].")
    return _scaled_sum("baddbmm", input, matmul(batch1, batch2), beta, alpha)
