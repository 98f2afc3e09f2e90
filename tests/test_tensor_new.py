"""``Tensor.new_*`` factories and ``Size`` printed under torch's name, against torch."""

from __future__ import annotations

import numpy as np
import pytest

import ddp


@pytest.mark.parametrize("make", [
    lambda x, T: x.new_zeros(2, 3),
    lambda x, T: x.new_zeros((2, 3), dtype=T.int64),
    lambda x, T: x.new_ones([4]),
    lambda x, T: x.new_full((2, 2), 7),
    lambda x, T: x.new_full([3], 2.5, dtype=T.float64),
    lambda x, T: x.new_tensor([[1, 2], [3, 4]]),
    lambda x, T: x.new_tensor([1.5, 2.5], dtype=T.int32),
    lambda x, T: x.new_empty(3, 1).shape,
])
def test_new_factories_take_dtype_from_self_as_torch(torch, make):
    results = []
    for T in (ddp, torch):
        x = T.ones(5, dtype=T.float16)
        results.append(make(x, T))
    ours, theirs = results
    if isinstance(theirs, tuple):
        assert tuple(ours) == tuple(theirs)
        return
    assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "ddp.")
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert not ours.requires_grad


def test_new_tensor_copies_and_can_require_grad():
    x = ddp.zeros(2)
    src = ddp.tensor([1.0, 2.0])
    y = x.new_tensor(src, requires_grad=True)
    src.add_(1)
    assert y.tolist() == [1.0, 2.0] and y.requires_grad and y.is_leaf
    assert x.new_zeros(3, requires_grad=True).requires_grad


def test_size_prints_as_torch(torch):
    for shape in [(2, 3), (), (4,)]:
        assert repr(ddp.zeros(shape).shape) == repr(torch.zeros(shape).shape)
    s = ddp.zeros(2, 3, 4).shape
    assert type(s[1:]) is ddp.Size and repr(s[1:]) == "torch.Size([3, 4])"
    assert s[0] == 2 and isinstance(s[0], int)
    assert type(s + (5,)) is ddp.Size and s + (5,) == (2, 3, 4, 5)
    assert type((1,) + s) is ddp.Size
    assert str(ddp.zeros(2).size()) == "torch.Size([2])"
