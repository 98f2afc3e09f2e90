"""torch surface that older and vision programs use: legacy typed constructors, ``Variable``,
``Tensor.type(...)``, pixel shuffle, and the ``orthogonal_``/``eye_``/``dirac_`` initialisers."""

import numpy as np
import pytest
from _helpers import EPS32, assert_within

import ddp


@pytest.mark.parametrize("name, dtype", [("FloatTensor", "float32"), ("DoubleTensor", "float64"),
                                         ("LongTensor", "int64"), ("IntTensor", "int32"),
                                         ("ByteTensor", "uint8"), ("BoolTensor", "bool"),
                                         ("HalfTensor", "float16")])
def test_legacy_constructors_as_torch(torch, name, dtype):
    for lib in (ddp, torch):
        cls = getattr(lib, name)
        assert tuple(cls().shape) == (0,)
        assert tuple(cls(2, 3).shape) == (2, 3) and str(cls(2, 3).dtype).endswith(dtype)
        assert tuple(cls(lib.Size([4])).shape) == (4,)
        data = cls([1, 0, 1])
        assert str(data.dtype).endswith(dtype)
        np.testing.assert_array_equal(data.numpy(), np.array([1, 0, 1], dtype=dtype))
        assert isinstance(data, cls)
        assert not isinstance(lib.zeros(2, dtype=lib.int16), cls)
        same = cls(data)
        assert same is not data and np.shares_memory(same.numpy(), data.numpy())
        other = lib.zeros(2, dtype=lib.int16)
        with pytest.raises(TypeError, match="expected"):
            cls(other)


def test_tensor_type_accepts_dtypes_legacy_types_and_names(torch):
    for lib in (ddp, torch):
        x = lib.ones(3)
        assert x.type(lib.DoubleTensor).dtype == lib.float64
        assert x.type("torch.LongTensor").dtype == lib.int64
        assert x.type(lib.int32).dtype == lib.int32
        with pytest.raises((ValueError, TypeError)):
            x.type("torch.NoSuchTensor")
    assert ddp.ones(3).type() == "ddp.FloatTensor"


def test_variable_is_a_leaf_sharing_memory_as_torch(torch):
    for lib in (ddp, torch):
        x = lib.ones(3)
        v = lib.autograd.Variable(x, requires_grad=True)
        assert v.requires_grad and not x.requires_grad and v.is_leaf
        assert np.shares_memory(v.detach().numpy(), x.numpy())
        (v * 2).sum().backward()
        np.testing.assert_array_equal(v.grad.numpy(), [2.0, 2.0, 2.0])
        assert not lib.autograd.Variable(x).requires_grad
        with pytest.raises(TypeError, match="Variable data has to be a tensor"):
            lib.autograd.Variable([1.0])


@pytest.mark.parametrize("shape, r", [((2, 8, 3, 2), 2), ((9, 2, 2), 3), ((2, 1, 4, 1, 2), 2)])
def test_pixel_shuffle_and_unshuffle_vs_torch(torch, shape, r):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    results = []
    for lib in (ddp, torch):
        t = lib.tensor(x, requires_grad=True)
        y = lib.nn.PixelShuffle(r)(t)
        weights = lib.arange(y.numel(), dtype=lib.float32).reshape(y.shape)
        (y * weights).sum().backward()
        back = lib.nn.functional.pixel_unshuffle(y, r)
        results.append((y.detach().numpy(), t.grad.numpy(), back.detach().numpy()))
        assert repr(lib.nn.PixelShuffle(r)) == f"PixelShuffle(upscale_factor={r})"
        assert repr(lib.nn.PixelUnshuffle(r)) == f"PixelUnshuffle(downscale_factor={r})"
    for mine, theirs in zip(results[0], results[1], strict=True):
        np.testing.assert_array_equal(mine, theirs)  # a rearrangement: exact
    np.testing.assert_array_equal(results[0][2], x)


def test_pixel_shuffle_errors_as_torch(torch):
    for lib in (ddp, torch):
        F = lib.nn.functional
        with pytest.raises(RuntimeError, match="divisible by the square of upscale_factor"):
            F.pixel_shuffle(lib.ones(1, 5, 2, 2), 2)
        with pytest.raises(RuntimeError, match="at least 3 dimensions"):
            F.pixel_shuffle(lib.ones(4, 2), 2)
        with pytest.raises(RuntimeError, match="height to be divisible by downscale_factor"):
            F.pixel_unshuffle(lib.ones(1, 1, 3, 2), 2)
        with pytest.raises(RuntimeError, match="width to be divisible by downscale_factor"):
            F.pixel_unshuffle(lib.ones(1, 1, 2, 3), 2)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (6, 2, 2), (4, 4)])
def test_orthogonal_init_is_orthogonal(shape):
    w = ddp.empty(*shape)
    assert ddp.nn.init.orthogonal_(w, gain=2.0) is w
    a = w.numpy().reshape(shape[0], -1).astype(np.float64)
    rows, cols = a.shape
    gram = a @ a.T if rows <= cols else a.T @ a
    # entries of a float32-rounded orthogonal matrix times 2: Gram error ~ 4 * k * eps
    assert_within(gram, 4.0 * np.eye(min(rows, cols)), 4 * 4 * max(rows, cols) * EPS32,
                  "orthogonal Gram matrix")
    first = ddp.empty(*shape)
    ddp.manual_seed(3)
    ddp.nn.init.orthogonal_(first)
    second = ddp.empty(*shape)
    ddp.manual_seed(3)
    ddp.nn.init.orthogonal_(second)
    np.testing.assert_array_equal(first.numpy(), second.numpy())  # the seeded generator


def test_eye_and_dirac_init_vs_torch(torch):
    for shape, groups in (((4, 2, 3), 1), ((6, 3, 3, 3), 2), ((2, 4, 1, 3, 3), 1)):
        mine = ddp.nn.init.dirac_(ddp.empty(*shape), groups)
        theirs = torch.nn.init.dirac_(torch.empty(*shape), groups)
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    np.testing.assert_array_equal(ddp.nn.init.eye_(ddp.empty(3, 5)).numpy(),
                                  torch.nn.init.eye_(torch.empty(3, 5)).numpy())
    for lib in (ddp, torch):
        with pytest.raises(ValueError, match="Only tensors with 2 dimensions"):
            lib.nn.init.eye_(lib.empty(2, 2, 2))
        with pytest.raises(ValueError, match="Only tensors with 3, 4, or 5 dimensions"):
            lib.nn.init.dirac_(lib.empty(2, 2))
        with pytest.raises(ValueError, match="Only tensors with 2 or more dimensions"):
            lib.nn.init.orthogonal_(lib.empty(3))
