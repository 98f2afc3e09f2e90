"""``F.pixel_shuffle`` / ``F.pixel_unshuffle``: channels to space and back (Shi et al., 2016).

Both are a reshape, a permutation and a reshape of the input's views, so the gradient is the
inverse rearrangement, recorded by those view ops. Errors are torch's.
"""

from __future__ import annotations

from ddp.tensor import Tensor


def _check(name: str, input: Tensor, factor: int, what: str) -> None:  # noqa: A002
    if not isinstance(factor, int) or isinstance(factor, bool) or factor <= 0:
        raise RuntimeError(f"{name} expects a positive {what}, but got {factor}")
    if input.ndim < 3:
        raise RuntimeError(f"{name} expects input to have at least 3 dimensions, but got input "
                           f"with {input.ndim} dimension(s)")


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:  # noqa: A002
    """``(*, C * r^2, H, W) -> (*, C, H * r, W * r)`` with ``r = upscale_factor``."""
    _check("pixel_shuffle", input, upscale_factor, "upscale_factor")
    r = upscale_factor
    *batch, channels, height, width = input.shape
    if channels % (r * r) != 0:
        raise RuntimeError(
            f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the "
            f"square of upscale_factor, but input.size(-3)={channels} is not divisible by "
            f"{r * r}")
    out_channels = channels // (r * r)
    nb = len(batch)
    x = input.reshape(*batch, out_channels, r, r, height, width)
    order = list(range(nb)) + [nb, nb + 3, nb + 1, nb + 4, nb + 2]
    return x.permute(*order).reshape(*batch, out_channels, height * r, width * r)


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:  # noqa: A002
    """``(*, C, H * r, W * r) -> (*, C * r^2, H, W)`` with ``r = downscale_factor``."""
    _check("pixel_unshuffle", input, downscale_factor, "downscale_factor")
    r = downscale_factor
    *batch, channels, height, width = input.shape
    for dim, size in (("height", height), ("width", width)):
        if size % r != 0:
            raise RuntimeError(
                f"pixel_unshuffle expects {dim} to be divisible by downscale_factor, but "
                f"input.size({-2 if dim == 'height' else -1})={size} is not divisible by {r}")
    nb = len(batch)
    x = input.reshape(*batch, channels, height // r, r, width // r, r)
    order = list(range(nb)) + [nb, nb + 2, nb + 4, nb + 1, nb + 3]
    return x.permute(*order).reshape(*batch, channels * r * r, height // r, width // r)
