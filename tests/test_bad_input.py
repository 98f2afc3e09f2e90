"""Bad input gets a clear exception naming the problem, never a crash or a silent wrong answer.

Each case pins the exception type and a distinctive part of the message (shapes, names,
ranges), so a regression to NumPy's bare errors or to a silent upcast fails here.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
import ddp.distributed as dist
import ddp.nn as nn
import ddp.nn.functional as F
import ddp.optim as optim
from ddp.utils.data import DataLoader, DistributedSampler, TensorDataset, default_collate


def raises(exc, *fragments):
    """Assert ``fn()`` raises ``exc`` whose message contains every fragment."""
    def check(fn):
        with pytest.raises(exc) as info:
            fn()
        message = str(info.value)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return info.value
    return check


# ------------------------------------------------------------------------------------- ops
A, B = ddp.randn(2, 3), ddp.randn(4, 5)

OP_CASES = [
    ("matmul", lambda: A @ B, RuntimeError, ["2x3", "4x5"]),
    ("add", lambda: A + B, ValueError, ["(2,3)", "(4,5)"]),
    ("cat", lambda: ddp.cat([A, B]), RuntimeError, ["[2, 3]", "[4, 5]"]),
    ("cat-empty", lambda: ddp.cat([]), RuntimeError, ["non-empty"]),
    ("stack", lambda: ddp.stack([A, B]), RuntimeError, ["[2, 3] at entry 0", "[4, 5]"]),
    ("reshape", lambda: A.reshape(4, 2), RuntimeError, ["[4, 2]", "size 6"]),
    ("view", lambda: A.view(5), RuntimeError, ["[5]", "size 6"]),
    ("expand", lambda: A.expand(4, 5), RuntimeError, ["[4, 5]", "[2, 3]"]),
    ("index", lambda: A[5], IndexError, ["index 5", "size 2", "(2, 3)"]),
    ("index-tensor", lambda: A[ddp.tensor([0, 9])], IndexError, ["index 9", "(2, 3)"]),
    ("sum-dim", lambda: A.sum(dim=3), IndexError, ["[-2, 1]", "got 3"]),
    ("cat-dim", lambda: ddp.cat([A, A], dim=5), IndexError, ["[-2, 1]", "got 5"]),
    ("unsqueeze-dim", lambda: A.unsqueeze(5), IndexError, ["[-3, 2]", "got 5"]),
    ("softmax-dim", lambda: A.softmax(dim=2), IndexError, ["[-2, 1]"]),
    ("mean-int", lambda: ddp.tensor([1, 2]).mean(), RuntimeError, ["floating point", "Int64"]),
    ("softmax-int", lambda: F.softmax(ddp.tensor([1, 2]), dim=0), NotImplementedError,
     ["softmax", "int64"]),
    ("log_softmax-int", lambda: ddp.tensor([1, 2]).log_softmax(0), NotImplementedError,
     ["log_softmax", "int64"]),
    ("matmul-dtypes", lambda: A @ ddp.ones(3, 2, dtype=ddp.int64), RuntimeError,
     ["same dtype", "float32", "int64"]),
    ("requires_grad-int", lambda: ddp.tensor([1, 2], requires_grad=True), RuntimeError,
     ["floating point", "int64"]),
    ("requires_grad_-int", lambda: ddp.zeros(2, dtype=ddp.int64).requires_grad_(), RuntimeError,
     ["floating point"]),
    ("item-many", lambda: A.item(), RuntimeError, ["6 elements"]),
    ("numpy-requires-grad", lambda: ddp.randn(2, requires_grad=True).numpy(), RuntimeError,
     ["detach().numpy()"]),
    ("bool-ambiguous", lambda: bool(A), RuntimeError, ["ambiguous"]),
    ("float-size", lambda: ddp.zeros(2.5), TypeError, ["sequence of ints", "2.5"]),
    ("negative-size", lambda: ddp.zeros(-1), RuntimeError, ["negative dimension -1"]),
    ("device-name", lambda: A.to("banana"), RuntimeError, ["cpu, cuda", "banana"]),
]


@pytest.mark.parametrize("fn, exc, fragments",
                         [c[1:] for c in OP_CASES], ids=[c[0] for c in OP_CASES])
def test_op_errors(fn, exc, fragments):
    raises(exc, *fragments)(fn)


# ------------------------------------------------- bounds checks, beside torch's own errors
def _x(T):
    return T.arange(6.0).reshape(2, 3)


def _img(T, h=2, w=2):
    return T.arange(float(h * w)).reshape(1, 1, h, w)


# (id, fn(T, F) for T in (ddp, torch), the type both raise, fragments of ddp's message)
BESIDE_TORCH = [
    ("index_select-negative", lambda T, F: T.arange(3.0).index_select(0, T.tensor([-1])),
     IndexError, ["index out of range in self", "index -1", "size 3"]),
    ("index_select-high", lambda T, F: _x(T).index_select(0, T.tensor([2])),
     IndexError, ["index out of range in self", "index 2", "size 2"]),
    ("index_select-float-index", lambda T, F: _x(T).index_select(1, T.tensor([1.0])),
     RuntimeError, ["Expected dtype int32 or int64 for index"]),
    ("index_select-2d-index", lambda T, F: _x(T).index_select(1, T.tensor([[1]])),
     IndexError, ["Index is supposed to be a vector"]),
    ("index_select-scalar", lambda T, F: T.tensor(5.0).index_select(0, T.tensor([0, 0])),
     RuntimeError, ["Index to scalar can have only 1 value, got 2"]),
    ("index_select-empty-dim", lambda T, F: T.zeros(0, 3).index_select(0, T.tensor([0])),
     RuntimeError, ["self indexing axis dim should be positive"]),
    ("gather-negative", lambda T, F: _x(T).gather(1, T.tensor([[-1], [0]])),
     RuntimeError, ["index -1 is out of bounds for dimension 1 with size 3"]),
    ("gather-high", lambda T, F: _x(T).gather(0, T.tensor([[2, 0, 0]])),
     RuntimeError, ["index 2 is out of bounds for dimension 0 with size 2"]),
    ("gather-float-index", lambda T, F: _x(T).gather(1, T.tensor([[1.0]])),
     RuntimeError, ["gather(): Expected dtype int32/int64 for index"]),
    ("gather-ndim", lambda T, F: _x(T).gather(1, T.tensor([1, 0])),
     RuntimeError, ["same number of dimensions"]),
    ("gather-index-larger", lambda T, F: _x(T).gather(1, T.zeros(3, 1, dtype=T.int64)),
     RuntimeError, ["Size does not match at dimension 0", "[3, 1]", "[2, 3]"]),
    ("floor_divide-int-zero", lambda T, F: T.tensor([7, -7]) // 0,
     RuntimeError, ["ZeroDivisionError"]),
    ("floor_divide-int-zero-tensor", lambda T, F: T.tensor([7, 1]) // T.tensor([1, 0]),
     RuntimeError, ["ZeroDivisionError"]),
    ("remainder-int-zero", lambda T, F: T.tensor(7) % 0,
     RuntimeError, ["ZeroDivisionError"]),
    ("remainder-int32-zero", lambda T, F: T.tensor([7], dtype=T.int32) % T.tensor([0],
                                                                                   dtype=T.int32),
     RuntimeError, ["ZeroDivisionError"]),
    ("div-floor-int-zero", lambda T, F: T.div(T.tensor([7]), 0, rounding_mode="floor"),
     RuntimeError, ["ZeroDivisionError"]),
    ("div-trunc-int-zero", lambda T, F: T.div(T.tensor([7]), 0, rounding_mode="trunc"),
     RuntimeError, ["ZeroDivisionError"]),
    ("div-rounding-mode", lambda T, F: T.div(T.tensor([7]), 2, rounding_mode="round"),
     RuntimeError, ["rounding_mode to be one of None, 'trunc', or 'floor'", "'round'"]),
    ("max_pool-window-past-input", lambda T, F: T.nn.MaxPool2d(4)(_img(T)),
     RuntimeError, ["Given input size: (1x2x2)", "(1x0x0)", "Output size is too small"]),
    ("max_pool-one-dim-too-small", lambda T, F: F.max_pool2d(_img(T, 2, 5), 3),
     RuntimeError, ["(1x0x1)", "Output size is too small"]),
    ("max_pool-dilated-past-input", lambda T, F: F.max_pool2d(_img(T, 3, 3), 2, 1, 0, 3),
     RuntimeError, ["Output size is too small"]),
    ("max_pool-stride-zero", lambda T, F: F.max_pool2d(_img(T, 4, 4), 2, 0),
     RuntimeError, ["stride should not be zero"]),
    ("max_pool-kernel-negative", lambda T, F: F.max_pool2d(_img(T, 4, 4), -1),
     RuntimeError, ["kernel size should be greater than zero", "kH: -1"]),
    ("max_pool-dilation-zero", lambda T, F: F.max_pool2d(_img(T, 4, 4), 2, dilation=0),
     RuntimeError, ["dilation should be greater than zero"]),
    ("max_pool-padding-negative", lambda T, F: F.max_pool2d(_img(T, 4, 4), 2, padding=-1),
     RuntimeError, ["pad must be non-negative"]),
    ("max_pool-empty-channels", lambda T, F: F.max_pool2d(T.zeros(1, 0, 4, 4), 2),
     RuntimeError, ["optional 0 dim batch size", "[1, 0, 4, 4]"]),
    ("arange-step-zero", lambda T, F: T.arange(0, 10, 0), RuntimeError, ["step must be nonzero"]),
    ("arange-float-step-zero", lambda T, F: T.arange(0.0, 1.0, 0.0), RuntimeError,
     ["step must be nonzero"]),
    ("arange-wrong-sign", lambda T, F: T.arange(0, 10, -1), RuntimeError,
     ["upper bound and lower bound inconsistent with step sign"]),
    ("arange-negative-end", lambda T, F: T.arange(-3), RuntimeError,
     ["inconsistent with step sign"]),
    ("arange-nan", lambda T, F: T.arange(0, float("nan")), RuntimeError,
     ["unsupported range: 0 -> nan"]),
    ("arange-inf", lambda T, F: T.arange(0, float("inf")), RuntimeError,
     ["unsupported range: 0 -> inf"]),
    ("linspace-negative", lambda T, F: T.linspace(0, 1, -1), RuntimeError,
     ["number of steps must be non-negative"]),
    ("eye-negative", lambda T, F: T.eye(-1), RuntimeError, ["n must be greater or equal to 0"]),
    ("eye-negative-m", lambda T, F: T.eye(2, -1), RuntimeError,
     ["m must be greater or equal to 0"]),
    ("randint-empty-range", lambda T, F: T.randint(5, 5, (2,)), RuntimeError,
     ["'from' to be less than 'to'", "from=5 >= to=5"]),
    ("randperm-negative", lambda T, F: T.randperm(-1), RuntimeError,
     ["negative dimension -1"]),
    ("ones-negative", lambda T, F: T.ones(2, -1), RuntimeError,
     ["negative dimension -1", "[2, -1]"]),
    ("randn-negative", lambda T, F: T.randn(-3), RuntimeError, ["negative dimension -3"]),
    ("full-negative", lambda T, F: T.full((-1,), 1.0), RuntimeError, ["negative dimension -1"]),
    ("narrow-start", lambda T, F: _x(T).narrow(1, -4, 1), IndexError,
     ["start out of range", "[-3, 3]", "got -4"]),
    ("narrow-start-past-end", lambda T, F: _x(T).narrow(1, 4, 0), IndexError,
     ["start out of range"]),
    ("narrow-length-negative", lambda T, F: _x(T).narrow(1, 0, -1), RuntimeError,
     ["length must be non-negative"]),
    ("narrow-past-end", lambda T, F: _x(T).narrow(1, 2, 2), RuntimeError,
     ["start (2) + length (2) exceeds dimension size (3)"]),
    ("split-negative", lambda T, F: _x(T).split(-1, 1), RuntimeError,
     ["split_size be non-negative", "split_size=-1"]),
    ("split-zero", lambda T, F: _x(T).split(0, 1), RuntimeError,
     ["split_size can only be 0 if dimension size is 0", "size of 3"]),
    ("split-sizes-negative", lambda T, F: _x(T).split([4, -1], 1), RuntimeError,
     ["only non-negative entries", "[4, -1]"]),
    ("chunk-zero", lambda T, F: _x(T).chunk(0), RuntimeError,
     ["chunk expects `chunks` to be greater than 0, got: 0"]),
    ("chunk-negative", lambda T, F: _x(T).chunk(-1), RuntimeError,
     ["greater than 0, got: -1"]),
    ("unbind-dim", lambda T, F: _x(T).unbind(5), IndexError, ["[-2, 1]", "got 5"]),
    ("repeat-negative", lambda T, F: _x(T).repeat(-1, 1), RuntimeError,
     ["negative dimension -2", "[-2, 3]"]),
    ("embedding-negative", lambda T, F: F.embedding(T.tensor([-1]), T.zeros(5, 2)), IndexError,
     ["index out of range in self", "index -1"]),
    ("embedding-padding_idx", lambda T, F: F.embedding(T.tensor([1]), T.zeros(5, 2),
                                                       padding_idx=5),
     AssertionError, ["Padding_idx must be within num_embeddings"]),
    ("embedding-padding_idx-negative", lambda T, F: F.embedding(T.tensor([1]), T.zeros(5, 2),
                                                                padding_idx=-6),
     AssertionError, ["Padding_idx must be within num_embeddings"]),
    ("cross_entropy-target-negative", lambda T, F: F.cross_entropy(T.zeros(2, 3),
                                                                   T.tensor([0, -1])),
     IndexError, ["Target -1 is out of bounds"]),
    ("nll_loss-target-high", lambda T, F: F.nll_loss(T.zeros(2, 3), T.tensor([0, 3])),
     IndexError, ["Target 3 is out of bounds"]),
    ("max-empty", lambda T, F: T.zeros(0, 3).max(), RuntimeError,
     ["max(): Expected reduction dim to be specified for input.numel() == 0"]),
    ("min-empty-dim", lambda T, F: T.zeros(0, 3).min(0), IndexError,
     ["min(): Expected reduction dim 0 to have non-zero size"]),
    ("amax-empty", lambda T, F: T.zeros(0, 3).amax(), RuntimeError,
     ["amax(): Expected reduction dim to be specified"]),
    ("amin-empty-dims", lambda T, F: T.zeros(0, 3).amin((0, 1)), IndexError,
     ["amin(): Expected reduction dim 0 to have non-zero size"]),
    ("argmax-empty", lambda T, F: T.zeros(0, 3).argmax(), IndexError,
     ["argmax(): Expected reduction dim to be specified"]),
    ("argmin-empty-dim", lambda T, F: T.zeros(0, 3).argmin(0), IndexError,
     ["argmin(): Expected reduction dim 0 to have non-zero size"]),
    ("tril-vector", lambda T, F: T.arange(3.0).tril(), RuntimeError,
     ["tril: input tensor must have at least 2 dimensions"]),
    ("triu-scalar", lambda T, F: T.tensor(1.0).triu(), RuntimeError,
     ["triu: input tensor must have at least 2 dimensions"]),
    ("flip-repeated-dim", lambda T, F: _x(T).flip([0, -2]), RuntimeError,
     ["dim 0 appears multiple times"]),
    ("cat-scalar", lambda T, F: T.cat([T.ones(1), T.tensor(2.0)]), RuntimeError,
     ["zero-dimensional tensor (at position 1) cannot be concatenated"]),
    ("conv2d-stride-zero", lambda T, F: F.conv2d(T.ones(1, 1, 4, 4), T.ones(1, 1, 2, 2),
                                                 stride=0),
     RuntimeError, ["non-positive stride is not supported"]),
    ("conv2d-padding-negative", lambda T, F: F.conv2d(T.ones(1, 1, 4, 4), T.ones(1, 1, 2, 2),
                                                      padding=-1),
     RuntimeError, ["negative padding is not supported"]),
    ("conv2d-dilation-zero", lambda T, F: F.conv2d(T.ones(1, 1, 4, 4), T.ones(1, 1, 2, 2),
                                                   dilation=0),
     RuntimeError, ["dilation should be greater than zero"]),
    ("conv2d-kernel-zero", lambda T, F: F.conv2d(T.ones(1, 1, 3, 3), T.ones(1, 1, 0, 0)),
     RuntimeError, ["kernel size should be greater than zero", "kernel_height: 0"]),
    ("embedding-1d-weight", lambda T, F: F.embedding(T.tensor([0]), T.zeros(5)), RuntimeError,
     ["'weight' must be 2-D"]),
    ("cross_entropy-label_smoothing", lambda T, F: F.cross_entropy(
        T.zeros(2, 3), T.tensor([0, 1]), label_smoothing=1.5),
     RuntimeError, ["label_smoothing must be between 0.0 and 1.0"]),
    ("index-tensor-high", lambda T, F: T.arange(3.0)[T.tensor([3])], IndexError,
     ["index 3 is out of bounds", "size 3"]),
    ("index-tensor-low", lambda T, F: T.arange(3.0)[T.tensor([-4])], IndexError,
     ["index -4 is out of bounds", "size 3"]),
]


@pytest.mark.parametrize("fn, exc, fragments", [c[1:] for c in BESIDE_TORCH],
                         ids=[c[0] for c in BESIDE_TORCH])
def test_bounds_errors_match_torch(fn, exc, fragments):
    torch = torch_oracle()
    import torch.nn.functional as torch_f

    with pytest.raises(exc):
        fn(torch, torch_f)
    raises(exc, *fragments)(lambda: fn(ddp, F))


# (id, fn(T, F)): valid edge cases that both must compute alike (values and dtype)
EDGES_BESIDE_TORCH = [
    ("index_select-negative-free", lambda T, F: _x(T).index_select(1, T.tensor([2, 0, 2]))),
    ("index_select-int32", lambda T, F: _x(T).index_select(1, T.tensor([2], dtype=T.int32))),
    ("index_select-0d-index", lambda T, F: _x(T).index_select(1, T.tensor(1))),
    ("index_select-scalar", lambda T, F: T.tensor(5.0).index_select(0, T.tensor([0]))),
    ("gather-smaller-index", lambda T, F: _x(T).gather(1, T.tensor([[2]]))),
    ("gather-wider-index", lambda T, F: _x(T).gather(1, T.tensor([[0, 1, 2, 0, 1]]))),
    ("gather-scalar", lambda T, F: T.tensor(5.0).gather(0, T.tensor(0))),
    ("div-trunc-int", lambda T, F: T.div(T.tensor([7, -7, 7, -7, 6]), T.tensor([2, 2, -2, -2, 3]),
                                         rounding_mode="trunc")),
    ("div-trunc-int64-exact", lambda T, F: T.div(T.tensor([2**62 + 1, -(2**62) - 1]), 3,
                                                 rounding_mode="trunc")),
    ("div-floor-int", lambda T, F: T.div(T.tensor([7, -7]), 2, rounding_mode="floor")),
    ("remainder-int", lambda T, F: T.tensor([7, -7, 7]) % T.tensor([3, 3, -3])),
    ("floor_divide-empty-by-zero", lambda T, F: T.zeros(0, 2, dtype=T.int64) // T.tensor([0, 1])),
    ("float-floor_divide-by-zero", lambda T, F: T.tensor([7.0, -7.0]) // 0),
    ("arange-float-steps", lambda T, F: T.arange(0, 1, 0.3)),
    ("arange-down", lambda T, F: T.arange(10, 0, -3)),
    ("arange-empty", lambda T, F: T.arange(5, 5)),
    ("max_pool-padded-small-input", lambda T, F: F.max_pool2d(_img(T), 3, 1, 1)),
    ("max_pool-empty-batch", lambda T, F: F.max_pool2d(T.zeros(0, 1, 4, 4), 2)),
    ("split-zero-on-empty", lambda T, F: T.zeros(0).split(0)[0]),
    ("chunk-empty", lambda T, F: T.stack(T.zeros(0).chunk(2))),
    ("narrow-negative-start", lambda T, F: _x(T).narrow(1, -1, 1)),
    ("narrow-at-end", lambda T, F: _x(T).narrow(1, 3, 0)),
    ("max-over-nonempty-dim-of-empty", lambda T, F: T.zeros(0, 3).max(1)[1]),
    ("amax-over-nonempty-dim-of-empty", lambda T, F: T.zeros(0, 3).amax(1)),
    ("argmax-over-nonempty-dim-of-empty", lambda T, F: T.zeros(0, 3).argmax(1)),
]


@pytest.mark.parametrize("fn", [c[1] for c in EDGES_BESIDE_TORCH],
                         ids=[c[0] for c in EDGES_BESIDE_TORCH])
def test_bounds_edge_cases_compute_like_torch(fn):
    torch = torch_oracle()
    import torch.nn.functional as torch_f

    want, got = fn(torch, torch_f), fn(ddp, F)
    assert tuple(got.shape) == tuple(want.shape)
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1]
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_gather_and_index_select_gradients_like_torch():
    torch = torch_oracle()
    grads = []
    for T in (torch, ddp):
        a = T.arange(6.0).reshape(2, 3).requires_grad_()
        (a.gather(1, T.tensor([[2, 2]])) * T.tensor([[1.0, 2.0]])).sum().backward()
        b = T.arange(6.0).reshape(2, 3).requires_grad_()
        b.index_select(1, T.tensor([2, 0, 2])).sum().backward()
        c = T.arange(6.0).reshape(2, 3).requires_grad_()  # an index smaller than the input
        (c.gather(1, T.tensor([[2, 0, 2, 2]])) * T.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
        grads.append((a.grad.tolist(), b.grad.tolist(), c.grad.tolist()))
    assert grads[0] == grads[1] == ([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]],
                                    [[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]],
                                    [[2.0, 0.0, 8.0], [0.0, 0.0, 0.0]])


def test_backward_twice_and_non_scalar():
    x = ddp.randn(3, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    raises(RuntimeError, "second time", "retain_graph=True")(y.backward)
    raises(RuntimeError, "scalar outputs", "(3,)")(lambda: (x * 2).backward())
    raises(RuntimeError, "does not require grad")(lambda: ddp.randn(3).sum().backward())
    raises(RuntimeError, "(4,)", "(3,)")(lambda: (x * 2).backward(ddp.ones(4)))


@pytest.mark.skipif(ddp.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_gpu_says_why():
    raises(RuntimeError, "cuda", "CuPy")(lambda: A.to("cuda"))
    raises(RuntimeError, "cuda", "CuPy")(lambda: nn.Linear(2, 3).cuda())


# -------------------------------------------------------------------------------------- nn
NN_CASES = [
    ("linear-features", lambda: nn.Linear(3, 4)(ddp.randn(2, 5)), RuntimeError,
     ["in_features=3", "(2, 5)", "expected 3"]),
    ("linear-float-size", lambda: nn.Linear(2.5, 4), TypeError, ["2.5"]),
    ("linear-int-input", lambda: nn.Linear(3, 4)(ddp.tensor([[1, 2, 3]])), RuntimeError,
     ["int64", "float32"]),
    ("linear-float64-input", lambda: nn.Linear(3, 4)(ddp.randn(2, 3, dtype=ddp.float64)),
     RuntimeError, ["float64", "float32", ".to("]),
    ("conv-channels", lambda: nn.Conv2d(3, 4, 3)(ddp.randn(1, 2, 8, 8)), RuntimeError,
     ["(1, 2, 8, 8)", "2 channels", "expects 3"]),
    ("conv-rank", lambda: nn.Conv2d(3, 4, 3)(ddp.randn(3, 8)), RuntimeError,
     ["4-D", "(3, 8)"]),
    ("conv-kernel", lambda: nn.Conv2d(3, 4, 5)(ddp.randn(1, 3, 2, 2)), RuntimeError,
     ["kernel size 5", "(1, 3, 2, 2)"]),
    ("conv-dtype", lambda: nn.Conv2d(3, 4, 3)(ddp.ones(1, 3, 5, 5, dtype=ddp.float64)),
     RuntimeError, ["float64", "float32"]),
    ("embedding-range", lambda: nn.Embedding(5, 3)(ddp.tensor([1, 7])), IndexError,
     ["index 7", "5 rows"]),
    ("embedding-negative", lambda: nn.Embedding(5, 3)(ddp.tensor([-1])), IndexError,
     ["index -1", "5 rows"]),
    ("embedding-float", lambda: nn.Embedding(5, 3)(ddp.tensor([1.0])), RuntimeError,
     ["integer dtype", "float32"]),
    ("layernorm-shape", lambda: nn.LayerNorm(4)(ddp.randn(2, 3)), RuntimeError,
     ["normalized_shape=[4]", "[2, 3]"]),
    ("layernorm-int", lambda: nn.LayerNorm(3)(ddp.ones(2, 3, dtype=ddp.int64)), RuntimeError,
     ["floating", "int64"]),
    ("ce-target-high", lambda: F.cross_entropy(ddp.randn(2, 3), ddp.tensor([0, 3])),
     IndexError, ["Target 3", "[0, 2]"]),
    ("ce-target-negative", lambda: F.cross_entropy(ddp.randn(2, 3), ddp.tensor([0, -2])),
     IndexError, ["Target -2"]),
    ("ce-float-target-shape", lambda: F.cross_entropy(ddp.randn(2, 3), ddp.randn(2)),
     ValueError, ["(2,)", "(2, 3)"]),
    ("ce-batch", lambda: F.cross_entropy(ddp.randn(2, 3), ddp.tensor([0, 1, 2])), ValueError,
     ["(3,)", "(2,)"]),
    ("ce-bool-target", lambda: F.cross_entropy(ddp.randn(2, 3), ddp.tensor([True, False])),
     RuntimeError, ["integer dtype", "bool"]),
    ("ce-reduction", lambda: F.cross_entropy(ddp.randn(2, 3), ddp.tensor([0, 1]),
                                             reduction="avg"), ValueError, ["avg"]),
    ("module-to-garbage", lambda: nn.Linear(2, 3).to("banana"), RuntimeError, ["banana"]),
    ("sequential-non-module", lambda: nn.Sequential(nn.Linear(2, 3), 5), TypeError,
     ["int", "Module"]),
    ("assign-int-as-parameter", lambda: setattr(nn.Linear(2, 3), "weight", 5), TypeError,
     ["weight", "Parameter"]),
    ("dropout-p", lambda: nn.Dropout(1.5), ValueError, ["1.5"]),
]


@pytest.mark.parametrize("fn, exc, fragments",
                         [c[1:] for c in NN_CASES], ids=[c[0] for c in NN_CASES])
def test_nn_errors(fn, exc, fragments):
    raises(exc, *fragments)(fn)


def test_load_state_dict_mismatches_name_keys_and_shapes():
    m = nn.Linear(2, 3)
    sd = m.state_dict()
    del sd["bias"]
    raises(RuntimeError, "Missing key(s)", '"bias"')(lambda: m.load_state_dict(sd))
    sd = {**m.state_dict(), "foo": ddp.zeros(1)}
    raises(RuntimeError, "Unexpected key(s)", '"foo"')(lambda: m.load_state_dict(sd))
    before = m.weight.detach().clone()
    raises(RuntimeError, "size mismatch for weight", "[3, 3]", "[3, 2]")(
        lambda: m.load_state_dict(nn.Linear(3, 3).state_dict()))
    np.testing.assert_array_equal(m.weight.detach().numpy(), before.numpy())
    raises(RuntimeError, '"weight"', "str")(
        lambda: m.load_state_dict({"weight": "x", "bias": ddp.zeros(3)}))
    raises(TypeError, "dict-like")(lambda: m.load_state_dict([1]))


# ----------------------------------------------------------------------------------- optim
def _param(n=3):
    return nn.Parameter(ddp.randn(n))


OPTIM_CASES = [
    ("sgd-lr", lambda: optim.SGD([_param()], lr=-1), ValueError, ["learning rate: -1"]),
    ("sgd-momentum", lambda: optim.SGD([_param()], lr=0.1, momentum=-1), ValueError,
     ["momentum value: -1"]),
    ("sgd-weight-decay", lambda: optim.SGD([_param()], lr=0.1, weight_decay=-1), ValueError,
     ["weight_decay value: -1"]),
    ("sgd-nesterov", lambda: optim.SGD([_param()], lr=0.1, nesterov=True), ValueError,
     ["Nesterov"]),
    ("adam-beta", lambda: optim.Adam([_param()], betas=(1.0, 0.9)), ValueError,
     ["beta parameter at index 0: 1.0"]),
    ("adam-betas-length", lambda: optim.Adam([_param()], betas=(0.9,)), ValueError,
     ["pair", "(0.9,)"]),
    ("adam-eps", lambda: optim.Adam([_param()], eps=-1), ValueError, ["epsilon value: -1"]),
    ("empty", lambda: optim.SGD([], lr=0.1), ValueError, ["empty parameter list"]),
    ("empty-generator", lambda: optim.SGD(iter([]), lr=0.1), ValueError,
     ["empty parameter list"]),
    ("single-tensor", lambda: optim.SGD(_param(), lr=0.1), TypeError, ["iterable"]),
    ("set", lambda: optim.SGD({_param()}, lr=0.1), TypeError, ["sets", "list"]),
    ("not-a-tensor", lambda: optim.SGD([5], lr=0.1), TypeError, ["int"]),
    ("non-leaf", lambda: optim.SGD([_param() * 2], lr=0.1), ValueError, ["non-leaf"]),
    ("group-without-params", lambda: optim.SGD([{"parms": [_param()]}], lr=0.1), KeyError,
     ["'params'", "parms"]),
]


@pytest.mark.parametrize("fn, exc, fragments",
                         [c[1:] for c in OPTIM_CASES], ids=[c[0] for c in OPTIM_CASES])
def test_optim_errors(fn, exc, fragments):
    raises(exc, *fragments)(fn)


def test_parameter_in_two_groups_and_duplicate_warning():
    p = _param()
    raises(ValueError, "more than one parameter group")(
        lambda: optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1))
    raises(ValueError, "more than one parameter group")(
        lambda: optim.SGD([p], lr=0.1).add_param_group({"params": [p]}))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        optim.SGD([p, p], lr=0.1)


def test_params_without_grad_are_skipped_like_torch():
    frozen = ddp.randn(3)
    opt = optim.SGD([frozen], lr=0.1)
    before = frozen.numpy().copy()
    opt.step()
    np.testing.assert_array_equal(frozen.numpy(), before)


def test_optimizer_load_state_dict_from_another_layout():
    q1, q2 = _param(3), _param(4)
    src = optim.SGD([q1, q2], lr=0.1, momentum=0.9)
    raises(ValueError, "group 0 has 2 parameters saved and 1 here")(
        lambda: optim.SGD([q1], lr=0.1).load_state_dict(src.state_dict()))
    two_groups = optim.SGD([{"params": [q1]}, {"params": [q2]}], lr=0.1)
    raises(ValueError, "1 saved, 2 in this optimizer")(
        lambda: two_groups.load_state_dict(optim.SGD([q1], lr=0.1).state_dict()))
    raises(ValueError, "'state' and 'param_groups'")(
        lambda: optim.SGD([q1], lr=0.1).load_state_dict({"x": 1}))
    # Same layout, different shapes: caught at load time, not as a broadcast error in step().
    adam = optim.Adam([q1])
    q1.grad = ddp.ones(3)
    adam.step()
    raises(ValueError, "'exp_avg'", "(3,)", "(4,)")(
        lambda: optim.Adam([q2]).load_state_dict(adam.state_dict()))


# ------------------------------------------------------------------------------------ data
DS = TensorDataset(ddp.randn(4, 2), ddp.randn(4))

DATA_CASES = [
    ("batch-size-0", lambda: DataLoader(DS, batch_size=0), ValueError, ["batch_size=0"]),
    ("batch-size-negative", lambda: DataLoader(DS, batch_size=-1), ValueError,
     ["batch_size=-1"]),
    ("batch-size-float", lambda: DataLoader(DS, batch_size=1.5), ValueError,
     ["batch_size=1.5"]),
    ("sampler-and-shuffle", lambda: DataLoader(DS, shuffle=True, sampler=[0, 1]), ValueError,
     ["mutually exclusive"]),
    ("num-workers", lambda: DataLoader(DS, num_workers=-1), ValueError, ["non-negative"]),
    ("tensor-dataset-sizes", lambda: TensorDataset(ddp.randn(4, 2), ddp.randn(3)), ValueError,
     ["(4, 2)", "(3,)"]),
    ("sampler-rank", lambda: DistributedSampler(DS, num_replicas=2, rank=2), ValueError,
     ["rank 2", "[0, 1]"]),
    ("sampler-negative-rank", lambda: DistributedSampler(DS, num_replicas=2, rank=-1),
     ValueError, ["rank -1"]),
    ("sampler-replicas", lambda: DistributedSampler(DS, num_replicas=0, rank=0), ValueError,
     ["num_replicas 0"]),
    ("sampler-before-init", lambda: DistributedSampler(DS), RuntimeError,
     ["init_process_group"]),
    ("collate-ragged", lambda: default_collate([ddp.randn(2), ddp.randn(3)]), RuntimeError,
     ["[2] at entry 0", "[3] at entry 1"]),
    ("collate-ragged-numpy", lambda: default_collate([np.zeros(2), np.zeros((3, 1))]),
     RuntimeError, ["[2] at entry 0", "[3, 1] at entry 1"]),
    ("collate-ragged-field", lambda: default_collate([(ddp.randn(2), 1), (ddp.randn(3), 1)]),
     RuntimeError, ["[2]", "[3]"]),
    ("collate-mixed", lambda: default_collate([ddp.randn(2), 5]), TypeError,
     ["Tensor", "element 1", "int"]),
    ("collate-lengths", lambda: default_collate([(1, 2), (1,)]), RuntimeError, ["equal size"]),
    ("collate-keys", lambda: default_collate([{"a": 1}, {"b": 1}]), KeyError,
     ["element 1", "'b'", "'a'"]),
    ("collate-empty", lambda: default_collate([]), ValueError, ["empty batch"]),
]


@pytest.mark.parametrize("fn, exc, fragments",
                         [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_errors(fn, exc, fragments):
    raises(exc, *fragments)(fn)


# ------------------------------------------------------------------------------- save/load
def test_load_missing_directory_truncated_and_pickle(tmp_path):
    raises(FileNotFoundError, "nope.pt")(lambda: ddp.load(tmp_path / "nope.pt"))
    raises(IsADirectoryError)(lambda: ddp.load(tmp_path))
    good = tmp_path / "x.pt"
    ddp.save({"a": ddp.randn(3)}, good)
    data = good.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    raises(RuntimeError, "t.pt", "truncated or corrupt")(lambda: ddp.load(tmp_path / "t.pt"))
    (tmp_path / "e.pt").write_bytes(b"")
    raises(RuntimeError, "e.pt", "not a ddp.save file")(lambda: ddp.load(tmp_path / "e.pt"))
    with open(tmp_path / "p.pt", "wb") as f:
        pickle.dump({"a": 1}, f)
    raises(RuntimeError, "pickle", "never unpickles")(lambda: ddp.load(tmp_path / "p.pt"))


def test_save_unsupported_objects_name_the_path(tmp_path):
    class Foo:
        pass

    raises(TypeError, "function", "obj['opt']['x']")(
        lambda: ddp.save({"opt": {"x": lambda: 1}}, tmp_path / "l.pt"))
    raises(TypeError, "Foo", "obj['state'][1]['y']")(
        lambda: ddp.save({"state": [1, {"y": Foo()}]}, tmp_path / "o.pt"))
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import ddp.serialization as serialization

    target = tmp_path / "ckpt.pt"
    ddp.save({"v": 1}, target)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write_array", broken)
    raises(OSError, "disk full")(lambda: ddp.save({"v": ddp.ones(2)}, target))
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert ddp.load(target) == {"v": 1}


def test_save_to_directory_or_missing_directory(tmp_path):
    raises(IsADirectoryError, "is a directory")(lambda: ddp.save({"a": 1}, tmp_path))
    raises(FileNotFoundError, "does not exist")(
        lambda: ddp.save({"a": 1}, tmp_path / "no" / "x.pt"))
    assert os.listdir(tmp_path) == [] and os.listdir(tmp_path.parent).count("no") == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_save_to_read_only_directory_leaves_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        raises(PermissionError, "Permission denied", "x.pt")(
            lambda: ddp.save({"a": ddp.ones(2)}, ro / "x.pt"))
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------- distributed (local)
def test_collectives_before_init_say_to_call_init_process_group():
    assert not dist.is_initialized()
    for fn in (lambda: dist.all_reduce(ddp.ones(2)), dist.get_rank, dist.barrier,
               lambda: dist.broadcast(ddp.ones(2), 0)):
        raises(RuntimeError, "init_process_group")(fn)
    from ddp.nn.parallel import DistributedDataParallel as DDP

    raises(RuntimeError, "init_process_group")(lambda: DDP(nn.Linear(2, 2)))


@pytest.fixture
def local_world():
    dist.init_process_group("local")
    yield
    dist.destroy_process_group()


def test_local_world_argument_errors(local_world):
    from ddp.distributed.optim import ZeroRedundancyOptimizer
    from ddp.nn.parallel import DistributedDataParallel as DDP

    raises(RuntimeError, "already", "destroy_process_group")(
        lambda: dist.init_process_group("local"))
    raises(ValueError, "rank 3")(lambda: dist.broadcast(ddp.ones(2), 3))
    raises(ValueError, "2 tensors", "1 ranks")(
        lambda: dist.all_gather([ddp.ones(2), ddp.ones(2)], ddp.ones(2)))
    raises(ValueError, "(3,)", "(2,)")(lambda: dist.all_gather([ddp.ones(3)], ddp.ones(2)))
    raises(TypeError, "ndarray")(lambda: dist.all_reduce(np.ones(2)))
    raises(ValueError, "Unknown reduce op")(lambda: dist.all_reduce(ddp.ones(2), op="mean"))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    raises(RuntimeError, "doesn't have any parameter that requires a gradient")(
        lambda: DDP(frozen))
    raises(TypeError, "Module", "int")(lambda: DDP(5))
    params = list(nn.Linear(2, 2).parameters())
    raises(ValueError, "stage must be 1 or 2, got 5")(
        lambda: ZeroRedundancyOptimizer(params, optim.SGD, lr=0.1, stage=5))
    raises(TypeError, "optimizer_class", "'SGD'")(
        lambda: ZeroRedundancyOptimizer(params, "SGD", lr=0.1))


def test_checkpoint_load_mismatches_name_entries(local_world, tmp_path):
    import ddp.distributed.checkpoint as dcp

    raises(FileNotFoundError, "no checkpoint")(lambda: dcp.load(tmp_path / "none",
                                                                nn.Linear(2, 2)))
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(ddp.randn(4, 2)).sum().backward()
    opt.step()
    version = dcp.save(str(tmp_path), model, opt)
    raises(ValueError, "'2.weight'")(
        lambda: dcp.load(str(tmp_path), nn.Sequential(nn.Linear(2, 3), nn.ReLU(),
                                                       nn.Linear(3, 1))))
    # Same element count, transposed shape: must not be silently scrambled.
    raises(ValueError, "'0.weight'", "(3, 2)", "(2, 3)")(
        lambda: dcp.load(str(tmp_path), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))))
    adam = optim.Adam(model.parameters())
    raises(ValueError, "SGD", "Adam")(lambda: dcp.load(str(tmp_path), model, adam))
    index = os.path.join(version, "index.json")
    with open(index, "w") as f:
        f.write("{trunc")
    raises(ValueError, "index.json", "truncated or corrupt")(
        lambda: dcp.load(str(tmp_path), model))


def test_checkpoint_truncated_array_names_the_file(local_world, tmp_path):
    import ddp.distributed.checkpoint as dcp

    model = nn.Linear(2, 3)
    version = dcp.save(str(tmp_path), model)
    weight = os.path.join(version, "model", "weight.npy")
    with open(weight, "rb") as f:
        data = f.read()
    with open(weight, "wb") as f:
        f.write(data[:-8])
    raises(ValueError, "weight.npy", "truncated or corrupt")(
        lambda: dcp.load(str(tmp_path), model))
    os.remove(weight)
    raises(FileNotFoundError, "weight.npy", "missing")(lambda: dcp.load(str(tmp_path), model))
