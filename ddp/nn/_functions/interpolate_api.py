"""``nn.functional.interpolate``: nearest, nearest-exact, linear, bilinear, bicubic, trilinear
and area resampling of 3-D, 4-D and 5-D inputs, with torch's index rules.

Every mode is separable, so the input is resampled one spatial axis at a time: nearest modes
select rows (``index_select``), the others multiply by a small ``(out, in)`` weight matrix built
on the host with torch's source-index formulas (``UpSample.h``). Backward therefore comes from
those two ops: the transposed matrix, or a scatter-add of the selected rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ddp import ops
from ddp.backend import get_array_module
from ddp.tensor import Tensor

_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear", "area", "nearest-exact")
_LINEAR_NDIM = {"linear": 3, "bilinear": 4, "trilinear": 5, "bicubic": 4}
_TORCH_INT_NAMES = {"int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char",
                    "bool": "Bool"}
_CUBIC_A = -0.75  # torch's (and OpenCV's) bicubic constant


def _scale(in_size: int, out_size: int, scale: float | None, real) -> float:
    """torch's ``compute_scales_value``: ``1/scale_factor`` when one is given, else in/out."""
    if scale is not None and scale > 0:
        return real(1.0 / scale)
    return real(in_size) / real(out_size)


def _nearest_index(in_size: int, out_size: int, scale: float | None, exact: bool) -> np.ndarray:
    """Source row of every output row, computed in float32 as torch's kernels do."""
    if out_size == in_size and not exact:
        return np.arange(out_size, dtype=np.int64)
    s = _scale(in_size, out_size, scale, np.float32)
    dst = np.arange(out_size, dtype=np.float32)
    if exact:
        dst = dst + np.float32(0.5)
    src = np.floor(dst * s).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _source_coords(in_size: int, out_size: int, scale: float | None, align_corners: bool,
                   cubic: bool, real) -> np.ndarray:
    """torch's ``area_pixel_compute_source_index`` for every output position."""
    dst = np.arange(out_size, dtype=real)
    if align_corners:
        s = real((in_size - 1) / (out_size - 1)) if out_size > 1 else real(0)
        return s * dst
    s = _scale(in_size, out_size, scale, real)
    src = s * (dst + real(0.5)) - real(0.5)
    return src if cubic else np.maximum(src, real(0))


def _linear_weights(in_size, out_size, scale, align_corners, real) -> np.ndarray:
    src = _source_coords(in_size, out_size, scale, align_corners, False, real)
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < in_size - 1)
    lam = np.clip(src - i0, 0, 1)
    w = np.zeros((out_size, in_size), dtype=real)
    rows = np.arange(out_size)
    np.add.at(w, (rows, i0), 1 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def _cubic_weights(in_size, out_size, scale, align_corners, real) -> np.ndarray:
    src = _source_coords(in_size, out_size, scale, align_corners, True, real)
    i0 = np.floor(src).astype(np.int64)
    t = src - i0
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    coeffs = (far(t + 1), near(t), near(1 - t), far(2 - t))
    w = np.zeros((out_size, in_size), dtype=real)
    rows = np.arange(out_size)
    for k, c in enumerate(coeffs):
        np.add.at(w, (rows, np.clip(i0 - 1 + k, 0, in_size - 1)), c)
    return w


def _area_weights(in_size, out_size, real) -> np.ndarray:
    """Adaptive average pooling: output ``o`` averages ``[floor(o*in/out), ceil((o+1)*in/out))``."""
    w = np.zeros((out_size, in_size), dtype=real)
    for o in range(out_size):
        start = (o * in_size) // out_size
        end = -((-(o + 1) * in_size) // out_size)
        w[o, start:end] = 1.0 / (end - start)
    return w


def _along(x: Tensor, dim: int, weights: np.ndarray) -> Tensor:
    """``weights (out, in)`` applied along ``dim`` of ``x``."""
    xp = get_array_module(x.array)
    wt = Tensor(xp.asarray(np.ascontiguousarray(weights.T, dtype=x.array.dtype)))
    if dim == x.ndim - 1:
        return ops.matmul(x, wt)
    return ops.matmul(x.transpose(dim, -1), wt).transpose(dim, -1)


def _is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _output_size(input: Tensor, size, scale_factor, recompute_scale_factor):  # noqa: A002
    """(output sizes, scales handed to the kernels or Nones), validated as torch does."""
    dim = input.ndim - 2
    spatial = list(input.shape[2:])
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be defined")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size.")
        if isinstance(size, Sequence):
            if len(size) != dim:
                raise ValueError(
                    "Input and output must have the same number of spatial dimensions, but got "
                    f"input with spatial dimensions of {spatial} and output size of {size}. "
                    "Please provide input tensor in (N, C, d1, d2, ...,dK) format and "
                    "output size in (o1, o2, ...,oK) format.")
            if not all(_is_integer(v) for v in size):
                raise TypeError("expected size to be one of int or Tuple[int] or Tuple[int, int] "
                                "or Tuple[int, int, int], but got size with types "
                                f"{[type(v) for v in size]}")
            return [int(v) for v in size], [None] * dim
        return [int(size)] * dim, [None] * dim
    if scale_factor is None:
        raise ValueError("either size or scale_factor should be defined")
    if isinstance(scale_factor, Sequence):
        if len(scale_factor) != dim:
            raise ValueError(
                "Input and scale_factor must have the same number of spatial dimensions, but "
                f"got input with spatial dimensions of {spatial} and scale_factor of shape "
                f"{scale_factor}. Please provide input tensor in (N, C, d1, d2, ...,dK) format "
                "and scale_factor in (s1, s2, ...,sK) format.")
        scales = [float(s) for s in scale_factor]
    else:
        scales = [float(scale_factor)] * dim
    out = [math.floor(n * s) for n, s in zip(spatial, scales, strict=True)]
    if recompute_scale_factor:
        return out, [None] * dim
    return out, scales


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",  # noqa: A002
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """Resamples the spatial dims of ``input (N, C, d1[, d2[, d3]])`` to ``size`` or by
    ``scale_factor``, with torch's modes, index rules and errors.

    Raises:
        ValueError: both or neither of ``size``/``scale_factor``, sizes of the wrong length,
            ``align_corners`` with a nearest or area mode, or ``antialias``.
        NotImplementedError: a mode that does not fit the input's dims (torch's messages);
            ``antialias=True`` (not offered by ddp).
    """
    if mode not in _MODES:
        raise NotImplementedError(
            f"Input Error: Only 3D, 4D and 5D input Tensors supported (got {input.ndim}D) for "
            "the modes: nearest | linear | bilinear | bicubic | trilinear | area | "
            f"nearest-exact (got {mode})")
    if mode in ("nearest", "area", "nearest-exact"):
        if align_corners is not None:
            raise ValueError("align_corners option can only be set with the interpolating "
                             "modes: linear | bilinear | bicubic | trilinear")
    elif align_corners is None:
        align_corners = False
    if input.ndim not in (3, 4, 5):
        raise NotImplementedError(
            f"Input Error: Only 3D, 4D and 5D input Tensors supported (got {input.ndim}D) for "
            "the modes: nearest | linear | bilinear | bicubic | trilinear | area | "
            f"nearest-exact (got {mode})")
    out_sizes, scales = _output_size(input, size, scale_factor, recompute_scale_factor)
    if mode == "area":  # adaptive pooling: the sizes alone define the windows
        scales = [None] * len(scales)
    if antialias:
        if not (mode in ("bilinear", "bicubic") and input.ndim == 4):
            raise ValueError("Anti-alias option is restricted to bilinear, bicubic, and lanczos "
                             "modes and requires a 4-D tensor as input")
        raise NotImplementedError("interpolate(antialias=True) is not implemented in ddp")
    want = _LINEAR_NDIM.get(mode)
    if want is not None and want != input.ndim:
        raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs {want}D input")
    kind = input.array.dtype
    if not input.dtype.is_floating_point:
        if kind != np.uint8:
            name = _TORCH_INT_NAMES.get(kind.name, kind.name)
            raise RuntimeError(f"\"upsample_{mode}\" not implemented for '{name}'")
        if mode not in ("nearest", "nearest-exact"):
            raise NotImplementedError(f"interpolate(mode='{mode}') of a uint8 tensor is not "
                                      "implemented in ddp (torch rounds it); convert with "
                                      ".float() first")
    for n, o in zip(input.shape[2:], out_sizes, strict=True):
        if n <= 0 or o <= 0:
            raise RuntimeError(f"Input and output sizes should be greater than 0, but got input "
                               f"({', '.join(map(str, input.shape[2:]))}) and output "
                               f"({', '.join(map(str, out_sizes))})")
    real = np.float64 if input.array.dtype == np.float64 else np.float32  # torch's opmath
    out = input
    for k, (n, o, s) in enumerate(zip(input.shape[2:], out_sizes, scales, strict=True)):
        dim = 2 + k
        if mode in ("nearest", "nearest-exact"):
            if o != n or mode == "nearest-exact":
                index = _nearest_index(n, o, s, mode == "nearest-exact")
                xp = get_array_module(input.array)
                out = ops.index_select(out, dim, Tensor(xp.asarray(index)))
            continue
        if mode == "area":
            w = _area_weights(n, o, real)
        elif mode == "bicubic":
            w = _cubic_weights(n, o, s, align_corners, real)
        else:
            w = _linear_weights(n, o, s, align_corners, real)
        out = _along(out, dim, w)
    return out
