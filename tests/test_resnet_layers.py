"""GroupNorm, Conv1d, AvgPool2d and AdaptiveAvgPool2d (functional and modules) against torch
(values and gradients, float64 to tight tolerance) and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import check_grad, check_torch

import ddp
import ddp.nn as nn

TIGHT = {"dtype": np.float64, "rtol": 1e-12, "atol": 1e-12}


# ------------------------------------------------------------------------------- group norm
@pytest.mark.parametrize("shape, groups", [((2, 6), 3), ((2, 6, 5), 2), ((3, 6, 4, 5), 3),
                                           ((2, 4, 3, 3), 1), ((2, 4, 3, 3), 4)])
def test_group_norm_vs_torch(shape, groups):
    def f(T, x, w, b):
        return (T.nn.functional.group_norm(x * 2 + 1, groups, w, b, eps=1e-4),
                T.nn.functional.group_norm(x, groups))

    check_torch(f, [shape, shape[1:2], shape[1:2]], **TIGHT)


def test_group_norm_finite_differences():
    assert check_grad(lambda T, x, w, b: T.nn.functional.group_norm(x, 2, w, b),
                      [(2, 4, 3), (4,), (4,)])


def test_group_norm_module_and_errors(torch):
    for T in (ddp, torch):
        m = T.nn.GroupNorm(2, 6)
        assert repr(m) == "GroupNorm(2, 6, eps=1e-05, affine=True, bias=True)"
        assert list(m.state_dict()) == ["weight", "bias"]
        assert m.weight.tolist() == [1.0] * 6 and m.bias.tolist() == [0.0] * 6
    check_torch(lambda T, x: T.nn.GroupNorm(3, 6, affine=False)(x), [(2, 6, 4)], **TIGHT)
    check_torch(lambda T, x: T.nn.GroupNorm(3, 6, bias=False, dtype=T.float64)(x), [(2, 6, 4)],
                **TIGHT)
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups "
                                         r"\(4\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(RuntimeError, match=r"divisible by num_groups, but got input of shape "
                                           r"\[2, 6, 4\] and num_groups=4"):
        ddp.nn.functional.group_norm(ddp.ones(2, 6, 4), 4)


# ----------------------------------------------------------------------------------- conv1d
@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (3, 1, 2)])
def test_conv1d_vs_torch(stride, padding, dilation):
    def f(T, x, w, b):
        return T.nn.functional.conv1d(x, w, b, stride=stride, padding=padding,
                                      dilation=dilation)

    check_torch(f, [(2, 3, 11), (4, 3, 3), (4,)], **TIGHT)
    check_torch(f, [(2, 3, 11), (4, 3, 3), (4,)])  # float32, check_torch's default tolerance


def test_conv1d_unbatched_no_bias_and_finite_differences():
    check_torch(lambda T, x, w: T.nn.functional.conv1d(x, w, padding=1), [(3, 9), (2, 3, 3)],
                **TIGHT)
    assert check_grad(lambda T, x, w, b: T.nn.functional.conv1d(x, w, b, stride=2, padding=1),
                      [(2, 2, 7), (3, 2, 3), (3,)])


def test_conv1d_module_loads_torch_state_dict(torch):
    t_mod = torch.nn.Conv1d(3, 5, 3, stride=2, padding=1, dtype=torch.float64)
    d_mod = nn.Conv1d(3, 5, 3, stride=2, padding=1, dtype=ddp.float64)
    assert repr(d_mod) == repr(t_mod)
    assert {k: tuple(v.shape) for k, v in d_mod.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in t_mod.state_dict().items()}
    bound = 1 / np.sqrt(3 * 3)  # kaiming_uniform(a=sqrt(5)) and the bias: U(+-1/sqrt(fan_in))
    assert np.abs(d_mod.weight.detach().numpy()).max() <= bound
    assert np.abs(d_mod.bias.detach().numpy()).max() <= bound
    d_mod.load_state_dict({k: ddp.tensor(v.detach().numpy()) for k, v in
                           t_mod.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 10))
    np.testing.assert_allclose(d_mod(ddp.tensor(x)).detach().numpy(),
                               t_mod(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------- avg pool
@pytest.mark.parametrize("kernel, stride, padding, count_include_pad", [
    (2, None, 0, True), (3, 2, 1, True), (3, 2, 1, False), (3, 1, 1, False), ((2, 3), (1, 2),
                                                                               (1, 1), True),
    (3, 3, 0, True),  # crops the remainder rows/columns
])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_avg_pool2d_vs_torch(kernel, stride, padding, count_include_pad, ceil_mode):
    def f(T, x):
        return T.nn.functional.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                                          count_include_pad=count_include_pad)

    check_torch(f, [(2, 3, 7, 8)], **TIGHT)


def test_avg_pool2d_divisor_override_and_finite_differences():
    check_torch(lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2, 1, divisor_override=5),
                [(1, 2, 6, 6)], **TIGHT)
    assert check_grad(lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2, 1,
                                                              count_include_pad=False),
                      [(1, 2, 5, 6)])


def test_avg_pool2d_module_and_errors(torch):
    for T in (ddp, torch):
        assert repr(T.nn.AvgPool2d(3, 2, 1)) == "AvgPool2d(kernel_size=3, stride=2, padding=1)"
    check_torch(lambda T, x: T.nn.AvgPool2d(2)(x), [(2, 3, 6, 6)], **TIGHT)
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        ddp.nn.functional.avg_pool2d(ddp.ones(1, 1, 6, 6), 2, padding=2)
    # ceil_mode: ResNet-D's shortcut pool, windows hanging over the edge divide by their part
    check_torch(lambda T, x: T.nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)(x),
                [(2, 3, 5, 7)], **TIGHT)
    check_torch(lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
                [(1, 2, 6, 6)], **TIGHT)


# ------------------------------------------------------------------------ adaptive avg pool
@pytest.mark.parametrize("output_size", [1, (1, 1), (2, 3), (3, None), (None, 2), (4, 4),
                                         (7, 9), (5, 8)])
def test_adaptive_avg_pool2d_vs_torch(output_size):
    check_torch(lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, output_size),
                [(2, 3, 5, 8)], **TIGHT)


def test_adaptive_avg_pool2d_unbatched_module_and_finite_differences(torch):
    check_torch(lambda T, x: T.nn.AdaptiveAvgPool2d((1, 1))(x), [(3, 4, 4)], **TIGHT)
    for T in (ddp, torch):
        assert repr(T.nn.AdaptiveAvgPool2d((1, None))) == "AdaptiveAvgPool2d(output_size=(1, None))"
    assert check_grad(lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, (2, 3)),
                      [(1, 2, 5, 7)])
    assert check_grad(lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, 2), [(1, 2, 4, 6)])


# ----------------------------------------------------------------------- conv transpose 2d
@pytest.mark.parametrize("stride, padding, output_padding, dilation, kernel", [
    (1, 0, 0, 1, 3), (2, 1, 1, 1, 3), (2, 0, 0, 1, 2), (3, 2, 1, 2, 3),
    (1, 2, 0, 1, 3),  # padding beyond d * (k - 1): the output is cropped
    ((2, 1), (1, 0), (1, 0), 1, (3, 2)),
])
def test_conv_transpose2d_vs_torch(stride, padding, output_padding, dilation, kernel):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel

    def f(T, x, w, b):
        return T.nn.functional.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                                                output_padding=output_padding,
                                                dilation=dilation)

    check_torch(f, [(2, 3, 5, 4), (3, 4, kh, kw), (4,)], **TIGHT)


def test_conv_transpose2d_module_finite_differences_and_errors(torch):
    assert check_grad(lambda T, x, w: T.nn.functional.conv_transpose2d(x, w, stride=2,
                                                                       padding=1),
                      [(1, 2, 3, 3), (2, 2, 3, 3)])
    t_mod = torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1,
                                     dtype=torch.float64)
    d_mod = nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1,
                               dtype=ddp.float64)
    assert repr(d_mod) == repr(t_mod)
    bound = 1 / np.sqrt(5 * 3 * 3)  # torch's fan_in of a transposed weight: C_out * kh * kw
    assert np.abs(d_mod.bias.detach().numpy()).max() <= bound
    d_mod.load_state_dict({k: ddp.tensor(v.detach().numpy()) for k, v in
                           t_mod.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(d_mod(ddp.tensor(x)).detach().numpy(),
                               t_mod(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="output padding must be smaller"):
        ddp.nn.functional.conv_transpose2d(ddp.ones(1, 2, 3, 3), ddp.ones(2, 2, 3, 3),
                                           output_padding=1)
