"""The public ``nn.functional`` helpers ``one_hot``, ``normalize``, ``cosine_similarity`` and
``pad``; ``nn.functional`` re-exports them. Validation (torch's messages) lives here, the maths
in :mod:`ddp.nn._functions.distance` and :mod:`ddp.nn._functions.padding`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ddp.autograd.autocast_mode import autocast_op
from ddp.backend import get_array_module
from ddp.nn._functions import distance as _dist
from ddp.nn._functions import padding as _pad
from ddp.ops._util import normalize_dim
from ddp.tensor import Tensor

_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """``int64`` tensor of shape ``tensor.shape + (num_classes,)``, 1 at each class index.

    ``num_classes=-1`` takes one more than the largest index (one device read).

    Raises:
        RuntimeError: ``tensor`` is not ``int64``, holds negative indices or indices
            ``>= num_classes``, or is empty while ``num_classes`` is to be inferred.
    """
    if str(tensor.dtype) != "ddp.int64":
        raise RuntimeError(f"one_hot is only applicable to index tensor of type LongTensor "
                           f"(got {tensor.dtype}).")
    array = tensor.array
    xp = get_array_module(array)
    if array.size == 0:
        if num_classes == -1:
            raise RuntimeError("Can not infer total number of classes from empty tensor.")
        high = low = 0
    else:
        low, high = (int(v) for v in xp.stack((array.min(), array.max())).tolist())
    if low < 0:
        raise RuntimeError(f"Class values must be non-negative (got {low}).")
    if num_classes == -1:
        num_classes = high + 1
    elif array.size and high >= num_classes:
        raise RuntimeError(f"Class values must be smaller than num_classes (got {high} for "
                           f"num_classes={num_classes}).")
    classes = xp.arange(num_classes, dtype=np.int64)
    return Tensor((array[..., None] == classes).astype(np.int64))


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,  # noqa: A002
              out: Tensor | None = None) -> Tensor:
    """``input / max(||input||_p, eps)`` along ``dim``.

    Raises:
        NotImplementedError: ``p <= 0`` (torch's ``p = 0`` counts non-zeros; not offered).
    """
    p = float(p)
    if not p > 0:
        raise NotImplementedError(f"normalize: only p > 0 (or inf) is supported, got p={p}")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"normalize: expected a floating input, got {input.dtype}")
    dim = normalize_dim(dim, input.ndim)
    result = _dist.Normalize.apply(input, math.inf if math.isinf(p) else p, dim, float(eps))
    if out is None:
        return result
    return out.copy_(result)


@autocast_op("cosine_similarity")
def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Cosine of the angle between ``x1`` and ``x2`` along ``dim`` (they broadcast).

    Each norm is floored at ``eps`` (``x / max(||x||, eps)``) before the dot product.

    Raises:
        RuntimeError: the shapes do not broadcast, or the inputs are not floating.
    """
    shape = _broadcast_shape(tuple(x1.shape), tuple(x2.shape))
    for t in (x1, x2):
        if not t.dtype.is_floating_point:
            raise RuntimeError(f"cosine_similarity: expected floating inputs, got {t.dtype}")
    if x1.dtype != x2.dtype:  # torch promotes: the wider float wins
        wide = x1.dtype if x1.array.dtype.itemsize >= x2.array.dtype.itemsize else x2.dtype
        x1, x2 = x1.to(wide), x2.to(wide)
    dim = normalize_dim(dim, len(shape))
    return _dist.CosineSimilarity.apply(x1, x2, dim, float(eps))


def _broadcast_shape(a: tuple, b: tuple) -> tuple:
    """The broadcast of two shapes, or torch's error naming the first dim that clashes."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    for dim in range(n - 1, -1, -1):
        if a[dim] != b[dim] and 1 not in (a[dim], b[dim]):
            raise RuntimeError(f"The size of tensor a ({a[dim]}) must match the size of "
                               f"tensor b ({b[dim]}) at non-singleton dimension {dim}")
    return tuple(max(x, y) if 0 not in (x, y) else 0 for x, y in zip(a, b, strict=True))


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant",  # noqa: A002
        value: float | None = None) -> Tensor:
    """Pad the trailing dims: ``pad = (left, right, top, bottom, ...)``, last dim first.

    ``constant`` fills with ``value`` (0 by default), over any number of dims. ``reflect``
    mirrors without repeating the edge, ``replicate`` repeats the edge, ``circular`` wraps
    around; they pad 1 to 3 trailing dims of an input with one or two more dims (torch's
    rule). A negative width crops (before the border modes take their border, as in torch).

    Raises:
        RuntimeError: ``pad`` has an odd length or more pairs than ``input`` has dims, a
            ``value`` for a non-constant mode, a width the mode cannot take, or a negative
            output size.
        NotImplementedError: an unknown mode, or a non-constant mode for other dims than
            torch's.
    """
    widths = [int(w) for w in pad]
    if len(widths) % 2:
        raise RuntimeError(f"Padding length must be divisible by 2 (got {len(widths)})")
    k = len(widths) // 2
    if k > input.ndim:
        raise RuntimeError(
            f"Padding length should be less than or equal to two times the input dimension "
            f"but got padding length {len(widths)} and input of dimension {input.ndim}")
    if mode not in _PAD_MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    pads = tuple((input.ndim - 1 - i, widths[2 * i], widths[2 * i + 1]) for i in range(k))
    if mode == "constant":
        _check_crops(input, pads)
        return _pad.ConstantPad.apply(input, pads, 0 if value is None else value)
    if value is not None and value != 0:
        raise RuntimeError(f'Padding mode "{mode}" doesn\'t take in value argument')
    if k not in (1, 2, 3) or input.ndim not in (k + 1, k + 2):
        raise NotImplementedError(
            f"Padding size {len(widths)} is not supported for {input.ndim}D input tensor.\n"
            "Supported combinations for non-constant padding:\n"
            "  - 2D or 3D input: padding size = 2 (pads last dimension)\n"
            "  - 3D or 4D input: padding size = 4 (pads last 2 dimensions)\n"
            "  - 4D or 5D input: padding size = 6 (pads last 3 dimensions)")
    if any(before < 0 or after < 0 for _, before, after in pads):
        # negative widths crop first, then the border is taken from what is left (torch's)
        crops = tuple((axis, min(before, 0), min(after, 0)) for axis, before, after in pads)
        _check_crops(input, crops)
        input = _pad.ConstantPad.apply(input, crops, 0)
        pads = tuple((axis, max(before, 0), max(after, 0)) for axis, before, after in pads)
    _check_border_widths(input, pads, mode)
    return _pad.BorderPad.apply(input, pads, mode)


def _check_crops(input: Tensor, pads: tuple) -> None:  # noqa: A002
    for axis, before, after in pads:
        if input.shape[axis] + before + after < 0:
            raise RuntimeError(
                f"The input size {input.shape[axis]}, plus negative padding {before} and "
                f"{after} resulted in a negative output size, which is invalid. Check "
                f"dimension {axis} of your input.")


def _check_border_widths(input: Tensor, pads: tuple, mode: str) -> None:  # noqa: A002
    for axis, before, after in pads:
        n = input.shape[axis]
        if mode == "reflect" and (before >= n or after >= n):
            raise RuntimeError(
                f"Argument #4: Padding size should be less than the corresponding input "
                f"dimension, but got: padding ({before}, {after}) at dimension {axis} of "
                f"input {list(input.shape)}")
        if mode == "circular" and (before > n or after > n):
            raise RuntimeError(
                f"Padding value causes wrapping around more than once (padding ({before}, "
                f"{after}) at dimension {axis} of size {n})")
        if mode == "replicate" and n == 0 and (before or after):
            raise RuntimeError(f"pad: cannot replicate the edge of an empty dimension {axis} "
                               f"of input {list(input.shape)}")
