"""``ddp.nn.functional`` against torch (float32 and float64) and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import (
    EPS32,
    GELU_DDP_FORWARD,
    GELU_TORCH_FORWARD,
    assert_within,
    check_grad,
    check_torch,
    gelu_float64,
)

import ddp
import ddp.nn.functional as F
from ddp.kernels.erf import erf


def test_erf_matches_math_erf_to_1e_15():
    x = np.concatenate([np.linspace(-8, 8, 40001), [0.5, -0.5, 4.0, -4.0, 30.0, -30.0]])
    ref = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(x), ref, rtol=2e-15, atol=1e-16)
    assert erf(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]
    assert np.isnan(erf(np.array([np.nan])))[0]
    big = np.random.default_rng(0).standard_normal((3, 40001)) * 3  # the blocked path
    np.testing.assert_allclose(erf(big), np.vectorize(math.erf)(big), rtol=2e-15, atol=1e-16)
    x32 = np.linspace(-5, 5, 1001, dtype=np.float32)
    assert erf(x32).dtype == np.float32
    # float32: a few ulp of |erf| <= 1, whatever SIMD exp NumPy picks (2.5 EPS32 = 5 ulp of 0.9)
    np.testing.assert_allclose(erf(x32), [math.erf(v) for v in x32.astype(float)],
                               atol=2.5 * EPS32)


def test_linear_vs_torch_2d_and_3d():
    def f(T, x, w, b):
        return T.nn.functional.linear(x, w, b)

    check_torch(f, [(4, 5), (3, 5), (3,)])
    check_torch(f, [(2, 4, 5), (3, 5), (3,)])
    check_torch(lambda T, x, w: T.nn.functional.linear(x, w), [(2, 4, 5), (3, 5)],
                dtype=np.float64, rtol=1e-10, atol=1e-12)


def test_linear_shape_error_names_both_shapes():
    with pytest.raises(RuntimeError, match=r"\(4, 5\).*\(3, 6\)"):
        F.linear(ddp.randn(4, 5), ddp.randn(3, 6))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), ((1, 2), (2, 0), 1),
                                                     (1, 1, 2)])
def test_conv2d_vs_torch(stride, padding, dilation):
    def f(T, x, w, b):
        return T.nn.functional.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)

    check_torch(f, [(2, 3, 7, 6), (4, 3, 3, 2), (4,)], atol=2e-5)


def test_conv2d_without_bias_float64_vs_torch():
    check_torch(lambda T, x, w: T.nn.functional.conv2d(x, w, padding=1), [(2, 2, 5, 5),
                                                                        (3, 2, 3, 3)],
                dtype=np.float64, rtol=1e-10, atol=1e-12)


def test_conv2d_finite_differences():
    assert check_grad(lambda T, x, w, b: T.nn.functional.conv2d(x, w, b, stride=2, padding=1),
                      [(1, 2, 5, 4), (2, 2, 3, 2), (2,)])


@pytest.mark.parametrize("threads", ["1", "2", "3"])  # chunks split over threads, raggedly
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, (0, 2), 2)])
def test_conv2d_in_uneven_batch_chunks_vs_torch(monkeypatch, stride, padding, dilation, threads):
    from ddp.nn._functions import conv

    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    monkeypatch.setattr(conv, "_CHUNK_COLUMN_BYTES", 1)  # one image per chunk: 5 chunks

    def f(T, x, w, b):
        return T.nn.functional.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)

    check_torch(f, [(5, 3, 7, 6), (4, 3, 3, 2), (4,)], atol=2e-5)
    monkeypatch.setattr(conv, "_CHUNK_COLUMN_BYTES", 2 * 3 * 9 * 9 * 8)  # chunks of 2, 2, 1
    assert check_grad(f, [(5, 3, 7, 7), (2, 3, 3, 3), (2,)])


def test_conv2d_input_without_grad_and_two_forwards_before_backward(torch):
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((3, 1, 9, 8)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    results = []
    for T in (ddp, torch):
        weight = T.tensor(w, requires_grad=True)
        # both forwards run before either backward: each must keep its own saved input
        y1 = T.nn.functional.conv2d(T.tensor(x1), weight, padding=1)
        y2 = T.nn.functional.conv2d(T.tensor(x2), weight, padding=1)
        (y1 * y1 + 3 * y2).sum().backward()
        results.append((y1.detach().numpy(), weight.grad.numpy()))
    for ours, theirs in zip(*results, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_conv2d_channel_mismatch_names_shapes():
    with pytest.raises(RuntimeError, match=r"3 channels.*\(4, 2, 3, 3\) expects 2"):
        F.conv2d(ddp.randn(1, 3, 5, 5), ddp.randn(4, 2, 3, 3))
    with pytest.raises(RuntimeError, match="4-D"):
        F.conv2d(ddp.randn(3, 5, 5), ddp.randn(4, 3, 3, 3))


@pytest.mark.parametrize("kernel,stride,padding", [
    (2, None, 0), (3, 2, 1), ((2, 3), (1, 2), 0),  # tiled (kernel == stride) and overlapping
    (3, None, 0), ((2, 3), None, 0), ((1, 2), None, 0), (2, 2, 1), (2, 1, 0),
])
def test_max_pool2d_vs_torch(kernel, stride, padding):
    def f(T, x):
        return T.nn.functional.max_pool2d(x, kernel, stride, padding)

    check_torch(f, [(2, 3, 7, 8)])


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, None), ((2, 3), None), (2, 1), (3, 2)])
def test_max_pool2d_many_ties_vs_torch(kernel, stride, torch):
    # small integers: most windows hold several equal maxima; the first one gets the gradient
    x = np.random.default_rng(1).integers(0, 3, (2, 3, 8, 7)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal((2, 3, 8, 7)).astype(np.float32)
    results = {}
    for T, dtype in ((ddp, np.float32), (torch, np.float32), (torch, np.float64)):
        t = T.tensor(x.astype(dtype), requires_grad=True)
        out = T.nn.functional.max_pool2d(t, kernel, stride)
        w = g[:, :, :out.shape[2], :out.shape[3]].astype(dtype)
        (out * T.tensor(w)).sum().backward(retain_graph=T is torch)
        results[T.__name__, dtype] = (out.detach().numpy(), t.grad.numpy())
        if dtype == np.float64:  # the same tie choices, upstream |g|: the sums' magnitudes
            t.grad = None
            (out * T.tensor(np.abs(w))).sum().backward()
            magnitude = t.grad.numpy()
    out, grad = results["ddp", np.float32]
    np.testing.assert_array_equal(out, results["torch", np.float32][0])  # a max is exact
    # Overlapping windows add up to n = ceil(k/s)^2 float32 terms, in another order than torch:
    # each sum is within (n - 1) * eps/2 * sum|terms| of the exact one (float64 here).
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (kh, kw) if stride is None else (stride, stride)
    n = math.ceil(kh / sh) * math.ceil(kw / sw)
    assert_within(grad, results["torch", np.float64][1],
                  (n - 1) * EPS32 / 2 * magnitude, "max_pool2d gradient")


def test_max_pool2d_finite_differences_tiled_and_overlapping():
    for kernel, stride in ((2, None), (3, 2)):
        assert check_grad(lambda T, x, k=kernel, s=stride: T.nn.functional.max_pool2d(x, k, s),
                          [(2, 2, 7, 6)])


def test_max_pool2d_ties_send_gradient_to_first_maximum(torch):
    x = np.zeros((1, 1, 2, 2), np.float32)
    d = ddp.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    F.max_pool2d(d, 2).sum().backward()
    torch.nn.functional.max_pool2d(t, 2).sum().backward()
    np.testing.assert_array_equal(d.grad.numpy(), t.grad.numpy())


def test_embedding_vs_torch_with_repeats_and_padding_idx():
    idx = np.array([[0, 2, 2, 5], [5, 1, 2, 0]], dtype=np.int64)

    def f(T, w, i):
        return T.nn.functional.embedding(i, w, padding_idx=5)

    check_torch(f, [(6, 3), idx])
    check_torch(lambda T, w, i: T.nn.functional.embedding(i, w), [(6, 3), idx],
                dtype=np.float64, rtol=1e-12)


def test_embedding_index_out_of_range():
    with pytest.raises(IndexError, match="index 6 is out of range.*6 rows"):
        F.embedding(ddp.tensor([1, 6]), ddp.randn(6, 2))


@pytest.mark.parametrize("shape,normalized", [((4, 6), (6,)), ((2, 3, 4, 5), (4, 5))])
def test_layer_norm_vs_torch(shape, normalized):
    def f(T, x, w, b):
        return T.nn.functional.layer_norm(x, normalized, w, b, eps=1e-5)

    check_torch(f, [shape, normalized, normalized])
    check_torch(lambda T, x: T.nn.functional.layer_norm(x, normalized), [shape])


def test_layer_norm_finite_differences():
    assert check_grad(lambda T, x, w, b: T.nn.functional.layer_norm(x, (4,), w, b),
                      [(3, 4), (4,), (4,)])


def test_layer_norm_shape_error():
    with pytest.raises(RuntimeError, match=r"normalized_shape=\[5\].*\[3, 4\]"):
        F.layer_norm(ddp.randn(3, 4), (5,))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float32_vs_float64_truth(approximate):
    x = np.linspace(-6, 6, 97, dtype=np.float32)
    y = F.gelu(ddp.tensor(x), approximate=approximate).numpy()
    assert_within(y, gelu_float64(x, approximate)[0], GELU_DDP_FORWARD * EPS32 * np.abs(x),
                  f"gelu({approximate!r}) float32")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_vs_torch(approximate):
    def f(T, x):
        return T.nn.functional.gelu(x, approximate=approximate)

    # float32: both are within their bounds (_helpers.GELU_*) of the truth, so they may differ
    # by the sum, at most at the largest |x| = 6
    check_torch(f, [np.linspace(-6, 6, 97).reshape(1, 97)],
                atol=(GELU_DDP_FORWARD + GELU_TORCH_FORWARD) * EPS32 * 6)
    check_torch(f, [(3, 5)], dtype=np.float64, rtol=1e-12, atol=1e-14)
    assert check_grad(f, [(2, 5)])


def test_activations_and_softmax_vs_torch():
    check_torch(lambda T, x: T.nn.functional.relu(x), [(3, 4)])
    check_torch(lambda T, x: T.nn.functional.tanh(x), [(3, 4)])
    check_torch(lambda T, x: T.nn.functional.sigmoid(x), [(3, 4)])
    check_torch(lambda T, x: T.nn.functional.softmax(x, dim=-1), [(3, 4)])
    check_torch(lambda T, x: T.nn.functional.log_softmax(x, dim=1), [(3, 4, 2)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_vs_torch(reduction, smoothing, weighted):
    target = np.array([0, 3, -100, 2, 3], dtype=np.int64)
    weight = np.array([0.5, 1.0, 2.0, 1.5], dtype=np.float32)

    def f(T, x, t):
        w = T.tensor(weight) if weighted else None
        return T.nn.functional.cross_entropy(x, t, weight=w, reduction=reduction,
                                             label_smoothing=smoothing)

    check_torch(f, [(5, 4), target])


def test_cross_entropy_nd_input_and_ignore_index():
    target = np.array([[[0, 2], [1, 1], [2, 7]]], dtype=np.int64).repeat(2, axis=0)

    def f(T, x, t):
        return T.nn.functional.cross_entropy(x, t, ignore_index=7, label_smoothing=0.2)

    check_torch(f, [(2, 3, 3, 2), target])
    check_torch(f, [(2, 3, 3, 2), target], dtype=np.float64, rtol=1e-12, atol=1e-14)


def test_cross_entropy_probability_targets_vs_torch():
    probs = np.random.default_rng(3).dirichlet(np.ones(4), size=3).astype(np.float32)
    check_torch(lambda T, x, p: T.nn.functional.cross_entropy(x, p, label_smoothing=0.1),
                [(3, 4), probs])


def test_cross_entropy_finite_differences():
    target = np.array([1, 0, 2], dtype=np.int64)
    weight = np.array([0.3, 1.0, 2.0])
    assert check_grad(lambda T, x, t: T.nn.functional.cross_entropy(
        x, t, weight=T.tensor(weight), label_smoothing=0.1), [(3, 3), target])


def test_cross_entropy_target_out_of_range():
    with pytest.raises(IndexError, match=r"Target 4 is out of bounds.*\[0, 3\]"):
        F.cross_entropy(ddp.randn(2, 4), ddp.tensor([1, 4]))
    with pytest.raises(IndexError, match="Target -1"):
        F.cross_entropy(ddp.randn(2, 4), ddp.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"target of shape \(2,\)"):
        F.cross_entropy(ddp.randn(2, 4), ddp.tensor([1, 0, 2]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_vs_torch(reduction):
    target = np.array([1, 0, -100, 2], dtype=np.int64)

    def f(T, x, t):
        return T.nn.functional.nll_loss(T.nn.functional.log_softmax(x, 1), t,
                                        weight=T.tensor([1.0, 2.0, 0.5]), reduction=reduction)

    check_torch(f, [(4, 3), target])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_vs_torch(reduction):
    check_torch(lambda T, a, b: T.nn.functional.mse_loss(a, b, reduction=reduction),
                [(3, 4), (3, 4)])


def test_dropout_statistics_scale_and_eval_identity():
    ddp.manual_seed(0)
    x = ddp.ones(200, 100, requires_grad=True)
    y = F.dropout(x, p=0.3)
    kept = y.detach().numpy() != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y.detach().numpy()[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy() != 0, kept)
    assert F.dropout(x, p=0.3, training=False) is x
    ddp.manual_seed(0)
    again = F.dropout(ddp.ones(200, 100), p=0.3)
    np.testing.assert_array_equal(again.numpy() != 0, kept)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, p=1.5)


def test_float32_stays_float32():
    x = ddp.randn(2, 3, 6, 6, requires_grad=True)
    w = ddp.randn(4, 3, 3, 3, requires_grad=True)
    out = F.gelu(F.layer_norm(F.conv2d(x, w, padding=1), (6,)))
    loss = F.cross_entropy(F.max_pool2d(out, 2).flatten(1)[:, :5], ddp.tensor([1, 2]))
    assert out.dtype == ddp.float32 and loss.dtype == ddp.float32
    loss.backward()
    assert x.grad.dtype == ddp.float32 and w.grad.dtype == ddp.float32
