"""Activations beyond ReLU/GELU and channel-wise dropout: functional forms and modules against
torch (values and gradients, float32 and float64), finite differences, kinks and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import EPS32, assert_within, check_grad, check_torch, torch_oracle

import ddp
import ddp.nn.functional as F
from ddp import nn

torch = torch_oracle()

# name -> fn(T, x) (or fn(T, x, w) for PReLU); inputs are standard normal, scaled where the
# interesting region is wider (ReLU6 up to 6, Softplus past its threshold).
ACTIVATIONS = {
    "silu": lambda T, x: T.nn.functional.silu(x),
    "mish": lambda T, x: T.nn.functional.mish(x * 3),
    "leaky_relu": lambda T, x: T.nn.functional.leaky_relu(x),
    "leaky_relu-0.2": lambda T, x: T.nn.functional.leaky_relu(x, 0.2),
    "elu": lambda T, x: T.nn.functional.elu(x * 2),
    "elu-alpha": lambda T, x: T.nn.functional.elu(x, alpha=0.7),
    "softplus": lambda T, x: T.nn.functional.softplus(x * 3),
    "softplus-beta-threshold": lambda T, x: T.nn.functional.softplus(x * 4, beta=2.0,
                                                                     threshold=5.0),
    "hardtanh": lambda T, x: T.nn.functional.hardtanh(x * 2),
    "hardtanh-bounds": lambda T, x: T.nn.functional.hardtanh(x, -0.5, 1.5),
    "relu6": lambda T, x: T.nn.functional.relu6(x * 4),
}
PRELU = {
    "prelu-shared": ((2, 3, 4), (1,)),
    "prelu-per-channel": ((2, 3, 4), (3,)),
    "prelu-4d": ((2, 3, 2, 2), (3,)),
    "prelu-2d": ((5, 3), (3,)),
    "prelu-1d": ((6,), (1,)),
}


def _prelu(T, x, w):
    return T.nn.functional.prelu(x, w)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_vs_torch_and_finite_differences(name):
    fn = ACTIVATIONS[name]
    # float32: a few roundings of relative size EPS32 each; the repo's float32 tolerance
    check_torch(fn, [(4, 25)])
    check_torch(fn, [(4, 25)], dtype=np.float64, rtol=1e-12, atol=1e-14)
    assert check_grad(fn, [(3, 7)])


@pytest.mark.parametrize("name,kwargs", [("silu", {}), ("mish", {}), ("elu", {"alpha": 0.7}),
                                         ("softplus", {}), ("softplus", {"beta": 2.0,
                                                                         "threshold": 5.0}),
                                         ("leaky_relu", {"negative_slope": 0.2})])
def test_float32_forward_within_rounding_of_the_float64_truth(name, kwargs):
    # Each is a chain of <= 6 float32 operations without cancellation (exp or expm1 or log1p,
    # then adds of same-signed terms, a division, a product, tanh for mish), each within
    # 2 ulp of its exact result, and the error of an exp argument feeds into the result
    # damped (|d log y / d log u| <= 1 here): relative to |y|, below 6 EPS32 overall. Measured
    # worst on 2e5 normal * 6 inputs and [-30, 30]: 2.4 (mish), 2.2 (silu) for ddp; 1.9 for
    # torch. The absolute 1e-38 covers results that underflow below float32's normal range.
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(20000) * 6, np.linspace(-30, 30, 2001)])
    x = x.astype(np.float32)
    y = getattr(F, name)(ddp.tensor(x), **kwargs).numpy()
    truth = getattr(torch.nn.functional, name)(torch.tensor(x.astype(np.float64)),
                                               **kwargs).numpy()
    assert y.dtype == np.float32
    assert_within(y, truth, 6 * EPS32 * np.abs(truth) + 1e-38, f"{name} float32")


@pytest.mark.parametrize("name", sorted(PRELU))
def test_prelu_vs_torch_and_finite_differences(name):
    x_shape, w_shape = PRELU[name]
    w = np.array([0.25, -0.5, 1.5][:w_shape[0]])
    check_torch(_prelu, [x_shape, w])
    check_torch(_prelu, [x_shape, w], dtype=np.float64, rtol=1e-12, atol=1e-14)
    assert check_grad(_prelu, [x_shape, w])


KINKS = np.array([[-7.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 6.0, 7.0]])


@pytest.mark.parametrize("fn", [
    lambda T, x: T.nn.functional.leaky_relu(x, 0.1),
    lambda T, x: T.nn.functional.elu(x, 0.5),
    lambda T, x: T.nn.functional.hardtanh(x),
    lambda T, x: T.nn.functional.hardtanh(x, -0.5, 2.0),
    lambda T, x: T.nn.functional.relu6(x),
    lambda T, x: T.nn.functional.softplus(x, beta=2.0, threshold=4.0),  # 2 * 2 == threshold
    lambda T, x: T.nn.functional.prelu(x, T.tensor(np.array([0.3]), dtype=x.dtype)),
], ids=["leaky_relu", "elu", "hardtanh", "hardtanh-bounds", "relu6", "softplus", "prelu"])
def test_gradient_at_the_kinks_is_torchs(fn):
    # 0, the clamp bounds and the softplus threshold, exactly: which side a kink belongs to
    check_torch(fn, [KINKS], dtype=np.float64, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["silu", "mish", "softplus"])
def test_no_overflow_on_large_inputs(name):
    x = np.array([[-1000.0, -100.0, -30.0, 30.0, 100.0, 1000.0]], dtype=np.float32)
    fn = getattr(F, name)
    d = ddp.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from NumPy either
        y = fn(d)
        y.sum().backward()
    ty = getattr(torch.nn.functional, name)(t)
    ty.sum().backward()
    assert np.isfinite(y.detach().numpy()).all() and np.isfinite(d.grad.numpy()).all()
    # atol: exp(-100) is a float32 denormal, with few significant bits in either library
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-30)


MODULES = [
    ("SiLU", {}), ("SiLU", {"inplace": True}), ("Mish", {}), ("LeakyReLU", {}),
    ("LeakyReLU", {"negative_slope": 0.3, "inplace": True}), ("ELU", {"alpha": 0.5}),
    ("Softplus", {"beta": 2.0, "threshold": 3.0}), ("Hardtanh", {"min_val": -2.0}),
    ("Hardtanh", {"min_val": -0.5, "max_val": 0.5, "inplace": True}), ("ReLU6", {}),
    ("ReLU6", {"inplace": True}), ("PReLU", {}), ("PReLU", {"num_parameters": 3, "init": 0.1}),
    ("Dropout2d", {"p": 0.3}), ("Dropout1d", {}),
]


@pytest.mark.parametrize("name,kwargs", MODULES, ids=lambda v: str(v))
def test_module_repr_and_output_match_torch(name, kwargs):
    if name == "PReLU":  # a float64 weight for the float64 input (prelu does not promote)
        ours = nn.PReLU(**kwargs, dtype=ddp.float64)
        theirs = torch.nn.PReLU(**kwargs, dtype=torch.float64)
    else:
        ours, theirs = getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert repr(ours) == repr(theirs)
    if name.startswith("Dropout"):
        return
    x = np.random.default_rng(0).standard_normal((2, 3, 4)) * 3
    dx, tx = ddp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, ty = ours(dx * 1.0), theirs(tx * 1.0)  # * 1.0: in-place modules need a non-leaf
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    (y * ddp.tensor(x)).sum().backward()
    (ty * torch.tensor(x)).sum().backward()
    np.testing.assert_allclose(dx.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    if name == "PReLU":
        assert [n for n, _ in ours.named_parameters()] == ["weight"]
        assert ours.weight.shape == theirs.weight.shape
        np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(),
                                   rtol=1e-12, atol=1e-14)


def test_prelu_module_weight_is_a_float32_parameter_filled_with_init():
    m = nn.PReLU(4, init=0.1)
    assert isinstance(m.weight, nn.Parameter) and m.weight.dtype == ddp.float32
    assert m.weight.tolist() == pytest.approx([0.1] * 4)
    assert list(m.state_dict()) == ["weight"]


@pytest.mark.parametrize("name", ["silu", "mish", "leaky_relu", "elu", "hardtanh", "relu6"])
def test_inplace_writes_into_the_input_and_backpropagates(name):
    x = np.random.default_rng(1).standard_normal((3, 4)) * 2
    results = []
    for T in (ddp, torch):
        leaf = T.tensor(x, requires_grad=True)
        h = leaf * 1.5
        out = getattr(T.nn.functional, name)(h, inplace=True)
        assert out is h
        (out * out).sum().backward()
        results.append((h.detach().numpy(), leaf.grad.numpy()))
    for ours, theirs in zip(*results, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        getattr(F, name)(ddp.tensor(x, requires_grad=True), inplace=True)


def test_errors_name_the_offending_values():
    with pytest.raises(RuntimeError, match="parameter numbers = 2 and channel size = 3"):
        F.prelu(ddp.randn(2, 3, 4), ddp.ones(2))
    for T in (torch, ddp):
        with pytest.raises(RuntimeError, match="Type promoting not supported"):
            T.nn.functional.prelu(T.randn(2, 3, dtype=T.float64), T.ones(1))
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        F.hardtanh(ddp.randn(3), 1.0, -1.0)
    for T in (torch, ddp):
        with pytest.raises(AssertionError, match=r"max_val \(-1.0\) must be greater than "
                                                 r"min_val \(1.0\)"):
            T.nn.Hardtanh(1.0, -1.0)
    with pytest.raises(NotImplementedError, match='"silu" not implemented for ddp.int64'):
        F.silu(ddp.tensor([1, 2]))
    for cls in (nn.Dropout1d, nn.Dropout2d):
        with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
            cls(1.5)
    with pytest.raises(RuntimeError, match="Expected 2D or 3D input, but received a 4D"):
        F.dropout1d(ddp.ones(1, 2, 3, 4))


@pytest.mark.parametrize("shape,fn", [((20, 50, 3, 4), F.dropout2d), ((20, 50, 7), F.dropout1d),
                                      ((50, 9), F.dropout1d)])
def test_channel_dropout_zeroes_whole_channels_and_scales(shape, fn):
    ddp.manual_seed(0)
    x = ddp.ones(*shape, requires_grad=True)
    y = fn(x, p=0.4)
    out = y.detach().numpy()
    channels = out.reshape(out.shape[:-1] + (-1,)) if len(shape) == 2 else \
        out.reshape(shape[:2] + (-1,))
    # every channel is all zeros or all 1 / (1 - p)
    first = channels[..., :1]
    assert (channels == first).all()
    values = np.unique(first)
    assert len(values) == 2 and values[0] == 0.0
    np.testing.assert_allclose(values[1], 1 / 0.6, rtol=1e-6)  # 1 / (1 - p) in float32
    kept = (first != 0).mean()
    n = first.size  # binomial(n, 0.6): 4 standard deviations
    assert abs(kept - 0.6) < 4 * np.sqrt(0.24 / n)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), out)
    assert fn(x, p=0.4, training=False) is x
    np.testing.assert_array_equal(fn(x, p=1.0).detach().numpy(), 0.0)


def test_dropout2d_module_train_and_eval_and_the_3d_warning():
    m = nn.Dropout2d(0.5)
    x = ddp.ones(4, 8, 2, 2)
    assert (m(x).numpy() == 0).any()
    m.eval()
    assert m(x) is x
    m.train()
    with pytest.warns(UserWarning, match="Received a 3D input to dropout2d"):
        m(ddp.ones(4, 8, 5))
