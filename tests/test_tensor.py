"""Tensor basics: factories and their default dtypes, conversions, properties and ``repr``."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp

FACTORIES = {
    "tensor_int": lambda T: T.tensor([1, 2]),
    "tensor_float": lambda T: T.tensor([1.0, 2]),
    "tensor_bool": lambda T: T.tensor([True, False]),
    "tensor_scalar": lambda T: T.tensor(3.5),
    "tensor_nested": lambda T: T.tensor([[1, 2], [3, 4]]),
    "tensor_of_tensors": lambda T: T.tensor([T.tensor(1.5), T.tensor(2.0)]),
    "tensor_numpy_f64": lambda T: T.tensor(np.array([1.0, 2.0])),
    "tensor_numpy_i32": lambda T: T.tensor(np.array([1, 2], dtype=np.int32)),
    "tensor_numpy_scalar": lambda T: T.tensor(np.float64(2.5)),
    "tensor_dtype": lambda T: T.tensor([1, 2], dtype=T.float64),
    "Tensor_list": lambda T: T.Tensor([1, 2]),
    "arange": lambda T: T.arange(5),
    "arange_float": lambda T: T.arange(0.0, 1, 0.25),
    "arange_step": lambda T: T.arange(1, 10, 3),
    "arange_dtype": lambda T: T.arange(4, dtype=T.float32),
    "zeros": lambda T: T.zeros(2, 3),
    "zeros_tuple": lambda T: T.zeros((2, 3), dtype=T.int32),
    "ones": lambda T: T.ones([3]),
    "full_float": lambda T: T.full((2, 2), 1.5),
    "full_int": lambda T: T.full((2,), 7),
    "full_bool": lambda T: T.full((2,), True),
    "zeros_like": lambda T: T.zeros_like(T.tensor([1, 2])),
    "ones_like_dtype": lambda T: T.ones_like(T.tensor([1, 2]), dtype=T.float64),
    "full_like": lambda T: T.full_like(T.ones(2, 2), 3),
    "eye": lambda T: T.eye(3),
    "linspace": lambda T: T.linspace(0, 1, 5),
    "empty_shape": lambda T: T.empty(2, 0).shape,
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_factories_match_torch(name):
    torch = torch_oracle()
    ours, theirs = FACTORIES[name](ddp), FACTORIES[name](torch)
    if not hasattr(ours, "dtype"):
        assert tuple(ours) == tuple(theirs)
        return
    assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "ddp.")
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_random_factories_dtypes_and_seeding():
    ddp.manual_seed(0)
    a = [ddp.rand(3), ddp.randn(2, 2), ddp.randint(0, 10, (4,)), ddp.randint(5, (2,))]
    ddp.manual_seed(0)
    b = [ddp.rand(3), ddp.randn(2, 2), ddp.randint(0, 10, (4,)), ddp.randint(5, (2,))]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert [t.dtype for t in a] == [ddp.float32, ddp.float32, ddp.int64, ddp.int64]
    assert 0 <= a[2].min().item() and a[2].max().item() < 10 and a[3].max().item() < 5
    assert 0 <= a[0].min().item() and a[0].max().item() < 1
    ddp.manual_seed(1)
    assert not np.array_equal(ddp.rand(3).numpy(), a[0].numpy())


def test_generator_is_independent_of_default():
    g = ddp.Generator().manual_seed(3)
    first = ddp.randn(4, generator=g)
    ddp.randn(10)
    again = ddp.randn(4, generator=ddp.Generator().manual_seed(3))
    np.testing.assert_array_equal(first.numpy(), again.numpy())


def test_tensor_copies_its_input():
    source = np.array([1.0, 2.0], dtype=np.float32)
    t = ddp.tensor(source)
    source[0] = 9
    assert t.tolist() == [1.0, 2.0]
    shared = ddp.from_numpy(source)
    source[1] = 7
    assert shared.tolist() == [9.0, 7.0]


def test_conversions_and_properties():
    t = ddp.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert t.shape == (2, 3) and t.size() == (2, 3) and t.size(1) == 3 and t.size(-2) == 2
    assert repr(t.shape) == "torch.Size([2, 3])"
    assert t.numel() == 6 and t.dim() == 2 and t.ndim == 2 and len(t) == 2
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert isinstance(t.numpy(), np.ndarray) and t.numpy().dtype == np.float32
    assert t[1, 2].item() == 6.0 and isinstance(t[1, 2].item(), float)
    assert isinstance(ddp.tensor([3]).item(), int)
    assert float(ddp.tensor(2.5)) == 2.5 and int(ddp.tensor([4])) == 4
    assert t.is_floating_point() and not ddp.tensor([1]).is_floating_point()
    assert t.type() == "ddp.FloatTensor" and ddp.tensor([1]).type() == "ddp.LongTensor"
    assert str(t.device) == "cpu" and t.is_leaf and t.grad is None
    assert [row.tolist() for row in t] == t.tolist()
    with pytest.raises(RuntimeError, match="cannot be converted to Scalar"):
        t.item()
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(t)
    with pytest.raises(RuntimeError, match="requires grad"):
        ddp.ones(2, requires_grad=True).numpy()


def test_to_and_casts():
    t = ddp.tensor([1.5, -2.5])
    assert t.to(ddp.float64).dtype == ddp.float64
    assert t.to("cpu") is t and t.float() is t
    assert t.to(dtype=ddp.int32).tolist() == [1, -2]
    assert t.to(ddp.tensor([1])).dtype == ddp.int64
    assert t.double().dtype == ddp.float64 and t.half().dtype == ddp.float16
    assert t.bool().tolist() == [True, True] and t.int().dtype == ddp.int32
    copy = t.to(ddp.float32, copy=True)
    copy[0] = 0.0
    assert t[0].item() == 1.5


REPRS = {
    "requires_grad": lambda T: T.tensor([0.9, 1.9], requires_grad=True),
    "scalar": lambda T: T.tensor(6.0),
    "scalar_frac": lambda T: T.tensor(0.5),
    "int": lambda T: T.tensor([1, 2]),
    "int32": lambda T: T.tensor([1, 2], dtype=T.int32),
    "float64": lambda T: T.tensor([1.25, 2.0], dtype=T.float64),
    "float16": lambda T: T.tensor([1.5], dtype=T.float16),
    "bool": lambda T: T.tensor([True, False]),
    "neg": lambda T: T.tensor([-1.0, 2.5, -0.125]),
    "integral_floats": lambda T: T.tensor([1.0, -20.0, 300.0]),
    "grad_fn_mul": lambda T: T.tensor([1.0, 2.0], requires_grad=True) * 2,
    "grad_fn_sum": lambda T: (T.tensor([1.0, 2.0], requires_grad=True) * 3).sum(),
    "grad_fn_mean_dim": lambda T: T.ones(2, 2, requires_grad=True).mean(0),
    "grad_fn_pow": lambda T: T.tensor([1.0, 2.0], requires_grad=True) ** 2,
    "grad_fn_mm": lambda T: T.ones(2, 2, requires_grad=True) @ T.ones(2, 2),
    "grad_fn_view": lambda T: T.ones(2, 2, requires_grad=True).view(4),
    "two_d": lambda T: T.tensor([[1.5, 2.25], [3.0, -4.0]]),
    "three_d": lambda T: T.arange(12).reshape(2, 3, 2),
    "large": lambda T: T.tensor([1e10, 1.0]),
    "small": lambda T: T.tensor([1e-5, 1.0]),
    "wide_range_ints": lambda T: T.tensor([1.0, 1e4]),
    "zero_and_small": lambda T: T.tensor([0.0, 1e-5, 0.5]),
    "nonfinite": lambda T: T.tensor([float("inf"), float("nan"), 1.5]),
    "nonfinite_int": lambda T: T.tensor([float("-inf"), 2.0]),
    "zeros": lambda T: T.zeros(3),
    "empty": lambda T: T.zeros(0),
    "empty_2d": lambda T: T.zeros(0, 3),
    "empty_int": lambda T: T.zeros(0, dtype=T.int64),
    "wrapped_line": lambda T: T.arange(30) * 1.5,
    "summarized": lambda T: T.arange(2000),
    "summarized_2d": lambda T: T.arange(4000.0).reshape(100, 40) / 7,
    "long_suffix": lambda T: T.arange(16, dtype=T.float64).reshape(2, 8) / 3,
}


@pytest.mark.parametrize("name", list(REPRS))
def test_repr_matches_torch(name):
    torch = torch_oracle()
    assert repr(REPRS[name](ddp)) == repr(REPRS[name](torch)).replace("torch.", "ddp.")


def test_str_and_format():
    t = ddp.tensor([1.0, 2.0])
    assert str(t) == repr(t)
    assert f"{ddp.tensor(2.5):.2f}" == "2.50"


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "int64", "int32", "bool"])
@pytest.mark.parametrize("data", [0.3, [1.7, -2.5], [[True, False]], 3, 1e-40, 2**20 + 0.5])
def test_tensor_from_python_numbers_converts_straight_to_dtype_like_torch(data, dtype):
    """``tensor(0.3, dtype=float64)`` holds the double 0.3, not the float32 rounding of it."""
    torch = torch_oracle()
    with np.errstate(over="ignore", invalid="ignore"):
        mine = ddp.tensor(data, dtype=getattr(ddp, dtype)).numpy()
    theirs = torch.tensor(data, dtype=getattr(torch, dtype)).numpy()
    assert mine.dtype == theirs.dtype
    np.testing.assert_array_equal(mine, theirs)
