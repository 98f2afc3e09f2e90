"""``F.one_hot``, ``F.normalize``, ``F.cosine_similarity`` and ``F.pad`` against torch (values
and gradients), finite differences for the new backward formulas, and torch's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import check_grad, check_torch, torch_oracle

import ddp
import ddp.nn.functional as F

torch = torch_oracle()


def _both(fn, inputs):
    """float32 at the repo's tolerance (rtol 1e-4, atol 1e-5: a norm is a sum of <= 5 squares
    and a square root, a pad copies exactly), float64 to rounding, then finite differences."""
    check_torch(fn, inputs)
    check_torch(fn, inputs, dtype=np.float64, rtol=1e-12, atol=1e-14)
    assert check_grad(fn, inputs)


# ------------------------------------------------------------------------------------ one_hot
@pytest.mark.parametrize("num_classes", [-1, 5])
def test_one_hot_matches_torch(num_classes):
    idx = np.array([[0, 3, 1], [2, 2, 0]], dtype=np.int64)
    ours = F.one_hot(ddp.tensor(idx), num_classes)
    theirs = torch.nn.functional.one_hot(torch.tensor(idx), num_classes)
    assert ours.dtype == ddp.int64 and not ours.requires_grad
    assert tuple(ours.shape) == tuple(theirs.shape)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    empty = F.one_hot(ddp.tensor(np.zeros((0,), np.int64)), 3)
    assert tuple(empty.shape) == (0, 3)


def test_one_hot_errors():
    with pytest.raises(RuntimeError, match="only applicable to index tensor of type LongTensor"):
        F.one_hot(ddp.tensor([0.0, 1.0]))
    for num_classes in (3, 0):
        with pytest.raises(RuntimeError, match="Class values must be smaller than num_classes"):
            F.one_hot(ddp.tensor([0, 3]), num_classes)
    with pytest.raises(RuntimeError, match="Class values must be non-negative"):
        F.one_hot(ddp.tensor([0, -1]))
    with pytest.raises(RuntimeError, match="Can not infer total number of classes"):
        F.one_hot(ddp.tensor(np.zeros((0,), np.int64)))


# ---------------------------------------------------------------------------------- normalize
@pytest.mark.parametrize("p,dim", [(2.0, 1), (2.0, -1), (1.0, 0), (3.0, 1), (math.inf, 1),
                                   (0.5, 2)])
def test_normalize_vs_torch_and_finite_differences(p, dim):
    _both(lambda T, x: T.nn.functional.normalize(x, p=p, dim=dim), [(3, 4, 2)])


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_normalize_zero_and_tiny_vectors_get_torchs_gradient(p):
    x = np.array([[0.0, 0.0, 0.0], [1e-14, -2e-14, 0.0], [3.0, -4.0, 1.0]])
    check_torch(lambda T, a: T.nn.functional.normalize(a, p=p, dim=1, eps=1e-12), [x],
                dtype=np.float64, rtol=1e-12, atol=1e-14)


def test_normalize_inf_norm_ties_share_the_gradient_like_torch():
    x = np.array([[2.0, -2.0, 1.0], [0.5, 0.5, 0.5]])
    check_torch(lambda T, a: T.nn.functional.normalize(a, p=math.inf, dim=1), [x],
                dtype=np.float64, rtol=1e-12, atol=1e-14)


# -------------------------------------------------------------------------- cosine_similarity
@pytest.mark.parametrize("shapes,dim", [([(4, 5), (4, 5)], 1), ([(3, 4, 2), (3, 4, 2)], -1),
                                        ([(3, 4), (1, 4)], 1), ([(2, 3, 4), (3, 4)], 0)])
def test_cosine_similarity_vs_torch_and_finite_differences(shapes, dim):
    _both(lambda T, a, b: T.nn.functional.cosine_similarity(a, b, dim=dim), shapes)


def test_cosine_similarity_zero_and_short_vectors_like_torch():
    a = np.array([[0.0, 0.0, 0.0], [1e-9, 2e-9, 0.0], [1.0, 2.0, 3.0]])
    b = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [1e-10, 0.0, 0.0]])
    check_torch(lambda T, x, y: T.nn.functional.cosine_similarity(x, y, eps=1e-8), [a, b],
                dtype=np.float64, rtol=1e-10, atol=1e-12)


def test_cosine_similarity_shape_error_is_torchs():
    for T in (torch, ddp):
        with pytest.raises(RuntimeError, match=r"size of tensor a \(4\) must match the size of "
                                               r"tensor b \(5\) at non-singleton dimension 1"):
            T.nn.functional.cosine_similarity(T.randn(3, 4), T.randn(3, 5))


# ---------------------------------------------------------------------------------------- pad
@pytest.mark.parametrize("shape,pad", [
    ((2, 3), (1, 2)), ((2, 3, 4), (0, 1, 2, 3)), ((2, 3, 4), (1, 1, 1, 1, 1, 1)),
    ((2, 3, 4, 5), (-1, 2, 0, -2)), ((3, 4), (2, -3)), ((1, 2, 3, 4, 2), (1, 0, 0, 1, 2, 0)),
])
def test_constant_pad_any_number_of_dims_vs_torch(shape, pad):
    _both(lambda T, x: T.nn.functional.pad(x, pad), [shape])
    check_torch(lambda T, x: T.nn.functional.pad(x, pad, value=-1.5), [shape],
                dtype=np.float64, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape,pad", [
    ((2, 5), (2, 3)), ((2, 3, 5), (4, 1)), ((2, 4, 5), (1, 2, 3, 0)),
    ((2, 3, 4, 5), (2, 1, 1, 3)), ((1, 2, 3, 4, 5), (1, 2, 0, 1, 2, 2)), ((2, 3, 4), (3, 0)),
    ((2, 5), (-1, 3)), ((2, 3, 5), (2, -1)), ((2, 4, 5), (-2, -1, 1, -1)),  # crops first
])
def test_border_pad_vs_torch_and_finite_differences(mode, shape, pad):
    _both(lambda T, x: T.nn.functional.pad(x, pad, mode=mode), [shape])


def test_pad_keeps_integer_dtype():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    for mode, value in (("constant", 7), ("reflect", None), ("replicate", None)):
        ours = F.pad(ddp.tensor(x), (1, 2), mode=mode, value=value)
        theirs = torch.nn.functional.pad(torch.tensor(x), (1, 2), mode=mode, value=value)
        assert ours.dtype == ddp.int64
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("args,error", [
    (((2, 3), (1,)), RuntimeError),
    (((2, 3), (1, 1, 1, 1, 1, 1)), RuntimeError),
    (((2, 3, 3), (3, 3), "reflect"), RuntimeError),
    (((2, 3, 3), (4, 0), "circular"), RuntimeError),
    (((2, 3), (-3, -1)), RuntimeError),
    (((2, 3, 3), (1, 1), "wrap"), NotImplementedError),
    (((3,), (1, 1), "reflect"), NotImplementedError),
    (((1, 2, 3, 4), (1, 1), "reflect"), NotImplementedError),
])
def test_pad_errors_are_torchs_kinds(args, error):
    shape, pad, *mode = args
    with pytest.raises(error):
        torch.nn.functional.pad(torch.zeros(shape), pad, *mode)
    with pytest.raises(error):
        F.pad(ddp.zeros(*shape), pad, *mode)


def test_pad_messages_name_the_sizes():
    with pytest.raises(RuntimeError, match=r"padding \(3, 3\) at dimension 2 of input "
                                           r"\[2, 3, 3\]"):
        F.pad(ddp.zeros(2, 3, 3), (3, 3), mode="reflect")
    with pytest.raises(RuntimeError, match="padding length 6 and input of dimension 2"):
        F.pad(ddp.zeros(2, 3), (1, 1, 1, 1, 1, 1))
    with pytest.raises(NotImplementedError, match="Padding size 2 is not supported for 4D"):
        F.pad(ddp.zeros(1, 2, 3, 4), (1, 1), mode="reflect")
    with pytest.raises(RuntimeError, match="doesn't take in value argument"):
        F.pad(ddp.zeros(2, 3), (1, 1), mode="replicate", value=2.0)
