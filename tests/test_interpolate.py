"""``F.interpolate`` and ``nn.Upsample`` against torch: values and input gradients for every
mode, sizes and scale factors that do not divide evenly, ``align_corners`` both ways, finite
differences in float64, and torch's errors."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import check_grad, check_torch, torch_oracle

import ddp
import ddp.nn.functional as F

torch = torch_oracle()


def _both(fn, shape):
    """float32 at the repo's tolerance (rtol 1e-4, atol 1e-5: each output is a sum of at most
    4**3 weighted inputs, the weights themselves rounded once), float64 to rounding (torch
    computes the source indices in double there too), then finite differences."""
    check_torch(fn, [shape])
    check_torch(fn, [shape], dtype=np.float64, rtol=1e-12, atol=1e-13)
    assert check_grad(fn, [shape])


CASES = [  # (shape, kwargs)
    ((2, 3, 5), {"size": 8}),
    ((2, 3, 5), {"size": 3}),
    ((2, 3, 5), {"scale_factor": 2}),
    ((2, 3, 7), {"scale_factor": 1.7}),
    ((1, 2, 5, 4), {"size": (7, 9)}),
    ((1, 2, 6, 5), {"size": (4, 3)}),
    ((1, 2, 3, 4), {"scale_factor": (2.5, 1.5)}),
    ((1, 2, 3, 4), {"scale_factor": 1.5, "recompute_scale_factor": True}),
    ((1, 1, 3, 4, 2), {"size": (5, 3, 4)}),
    ((1, 2, 1, 4), {"size": (3, 1)}),
]
_MODE_NDIM = {"linear": 3, "bilinear": 4, "bicubic": 4, "trilinear": 5}


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "area"])
@pytest.mark.parametrize("shape,kwargs", CASES)
def test_nearest_and_area_modes_vs_torch(mode, shape, kwargs):
    _both(lambda T, x: T.nn.functional.interpolate(x, mode=mode, **kwargs), shape)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode,shape,kwargs", [
    (mode, shape, kwargs) for mode in ("linear", "bilinear", "bicubic", "trilinear")
    for shape, kwargs in CASES if len(shape) == _MODE_NDIM[mode]])
def test_interpolating_modes_vs_torch(mode, align_corners, shape, kwargs):
    _both(lambda T, x: T.nn.functional.interpolate(x, mode=mode, align_corners=align_corners,
                                                   **kwargs), shape)


def test_nearest_keeps_uint8_and_default_align_corners_is_false():
    x = np.arange(12, dtype=np.uint8).reshape(1, 1, 3, 4)
    for mode in ("nearest", "nearest-exact"):
        ours = F.interpolate(ddp.tensor(x), scale_factor=1.5, mode=mode)
        theirs = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=1.5, mode=mode)
        assert ours.dtype == ddp.uint8
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    with pytest.raises(RuntimeError, match="\"upsample_nearest\" not implemented for 'Long'"):
        F.interpolate(ddp.zeros(1, 1, 2, dtype=ddp.int64), size=3)
    with pytest.raises(NotImplementedError, match="uint8 tensor is not implemented in ddp"):
        F.interpolate(ddp.tensor(x), size=3, mode="bilinear")
    check_torch(lambda T, x: T.nn.functional.interpolate(x, size=(5, 6), mode="bilinear"),
                [(1, 2, 3, 4)], lambda T, x: T.nn.functional.interpolate(
                    x, size=(5, 6), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("module", [
    lambda nn: nn.Upsample(scale_factor=2),
    lambda nn: nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True),
    lambda nn: nn.Upsample(scale_factor=(1.5, 2), mode="bicubic"),
    lambda nn: nn.UpsamplingNearest2d(scale_factor=3),
    lambda nn: nn.UpsamplingBilinear2d(size=6),
])
def test_upsample_modules_vs_torch(module):
    check_torch(lambda T, x: module(T.nn)(x), [(2, 3, 4, 3)])
    assert repr(module(ddp.nn)) == repr(module(torch.nn))


@pytest.mark.parametrize("args,kwargs,error", [
    (((1, 2, 3, 4),), {}, ValueError),
    (((1, 2, 3, 4),), {"size": 3, "scale_factor": 2}, ValueError),
    (((1, 2, 3, 4),), {"size": (3, 4, 5)}, ValueError),
    (((1, 2, 3, 4),), {"scale_factor": (2,)}, ValueError),
    (((1, 2, 3, 4),), {"size": 3, "align_corners": True}, ValueError),
    (((1, 2, 3, 4),), {"size": 3, "recompute_scale_factor": True}, ValueError),
    (((1, 2, 3, 4),), {"size": 3, "mode": "linear"}, NotImplementedError),
    (((1, 2, 3),), {"size": 3, "mode": "bilinear"}, NotImplementedError),
    (((1, 2, 3, 4, 5),), {"size": 3, "mode": "bicubic"}, NotImplementedError),
    (((2, 3),), {"size": 3}, NotImplementedError),
    (((1, 2, 3, 4),), {"size": 3, "mode": "cubic"}, NotImplementedError),
    (((1, 2, 3, 4),), {"size": 3, "mode": "nearest", "antialias": True}, ValueError),
    (((1, 2, 3, 4),), {"size": (3, 2.5)}, TypeError),
])
def test_errors_are_torchs_kinds(args, kwargs, error):
    (shape,) = args
    with pytest.raises(error):
        torch.nn.functional.interpolate(torch.zeros(shape), **kwargs)
    with pytest.raises(error):
        F.interpolate(ddp.zeros(*shape), **kwargs)


def test_messages_name_the_problem():
    with pytest.raises(ValueError, match="only one of size or scale_factor should be defined"):
        F.interpolate(ddp.zeros(1, 1, 2, 2), size=3, scale_factor=2)
    with pytest.raises(ValueError, match=r"spatial dimensions of \[2, 2\] and output size of "
                                         r"\(3, 4, 5\)"):
        F.interpolate(ddp.zeros(1, 1, 2, 2), size=(3, 4, 5))
    with pytest.raises(NotImplementedError, match="Got 4D input, but linear mode needs 3D input"):
        F.interpolate(ddp.zeros(1, 1, 2, 2), size=3, mode="linear")
    with pytest.raises(NotImplementedError, match="antialias=True"):
        F.interpolate(ddp.zeros(1, 1, 2, 2), size=3, mode="bilinear", antialias=True)
