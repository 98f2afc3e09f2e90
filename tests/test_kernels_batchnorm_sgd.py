"""The batch-norm and SGD kernels (``ddp.kernels.batch_norm_*``, ``sgd_update_multi``) on both
paths (``kernel_path``: the NumPy reference and the compiled ``ddp.kernels.cpu``), against
float64 truth and torch, on one thread and on several (threads take channels, or ranges of a
tensor's elements).

Float32 bounds: the statistics accumulate in float64 on the compiled path, in float32 pairwise
sums on the reference (relative error about log2(n) * EPS32 of the sums), and every output is
rounded once or a few times to float32; the bounds below are a few ulps of the outputs' scale
plus the mean's error amplified by 1/std.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import EPS32, assert_within, torch_oracle

import ddp
from ddp import kernels

THREADS = [1, 3]
# N * L = 131072 per channel: MIN_PER_THREAD elements, so 5 channels split over 3 threads
# (2, 2, 1 channels); 5 is odd on purpose.
BIG_NCL = (8, 5, 16384)


@pytest.fixture(params=THREADS, ids=lambda t: f"{t}threads")
def threads(request, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(request.param))
    return request.param


def _truth_forward(x64, w64, b64, eps):
    """float64 training batch norm of an (N, C, L) array: out, xhat, mean, biased var."""
    mean = x64.mean(axis=(0, 2))
    var = ((x64 - mean[:, None]) ** 2).mean(axis=(0, 2))
    xhat = (x64 - mean[:, None]) / np.sqrt(var + eps)[:, None]
    return xhat * w64[:, None] + b64[:, None], xhat, mean, var


def _data(shape, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (offset + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = (1.0 + 0.5 * rng.standard_normal(c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    return x, g, w, b


@pytest.mark.parametrize("shape", [BIG_NCL, (3, 7, 33)], ids=["big", "small"])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_train_forward_and_backward_float32_vs_float64_truth(kernel_path, threads, shape,
                                                             offset):
    x, g, w, b = _data(shape, offset)
    eps = 1e-5
    out, xhat, mean, m2, invstd = kernels.batch_norm_train_forward(x, w, b, eps)
    x64, g64, w64, b64 = (a.astype(np.float64) for a in (x, g, w, b))
    t_out, t_xhat, t_mean, t_var = _truth_forward(x64, w64, b64, eps)
    count = shape[0] * shape[2]
    std = np.sqrt(t_var + eps)
    # the mean's error (float32 pairwise sums on the reference) over std, plus roundings
    mean_err = (2 + np.log2(count)) * EPS32 * (np.abs(t_mean) + std)
    assert out.dtype == xhat.dtype == invstd.dtype == np.float32
    assert_within(mean, t_mean, mean_err, "mean")
    assert_within(m2 / count, t_var, 8 * mean_err * std + (2 + np.log2(count)) * EPS32 * t_var,
                  "biased var")
    h_bound = (mean_err / std)[:, None] + 4 * EPS32 * (1 + np.abs(t_xhat))
    assert_within(xhat, t_xhat, h_bound, "xhat")
    assert_within(out, t_out, np.abs(w64)[:, None] * h_bound + 4 * EPS32 * (1 + np.abs(t_out)),
                  "out")
    assert_within(invstd, 1 / std, 8 * EPS32 / std + 8 * mean_err / std ** 2, "invstd")

    scale = invstd * w
    gx, sum_dy, sum_dy_xhat = kernels.batch_norm_backward(g, xhat, scale, True)
    t_sum_dy = g64.sum(axis=(0, 2))
    t_sum_dy_xhat = (g64 * t_xhat).sum(axis=(0, 2))
    t_gx = (w64 / std)[:, None] * (g64 - t_sum_dy[:, None] / count
                                   - t_xhat * t_sum_dy_xhat[:, None] / count)
    sums_bound = (2 + np.log2(count)) * EPS32 * np.abs(g64).sum(axis=(0, 2))
    assert_within(sum_dy, t_sum_dy, sums_bound, "sum(g)")
    sdx_bound = sums_bound * (1 + np.abs(t_xhat).max()) + (np.abs(g64) * h_bound).sum(
        axis=(0, 2))  # the sum's roundings, and xhat's own error carried by g
    assert_within(sum_dy_xhat, t_sum_dy_xhat, sdx_bound, "sum(g * xhat)")
    gx_bound = (np.abs(w64) / std)[:, None] * (
        8 * EPS32 * (np.abs(g64) + 1 + np.abs(t_xhat)) + h_bound
        + (sums_bound[:, None] + sdx_bound[:, None] * (1 + np.abs(t_xhat))) / count)
    assert_within(gx, t_gx, gx_bound, "grad input")

    gx_split = kernels.batch_norm_grad_input(g, xhat, scale, sum_dy / count,
                                             sum_dy_xhat / count)
    assert_within(gx_split, t_gx, gx_bound, "grad input (the SyncBatchNorm pieces)")
    sums = kernels.batch_norm_grad_sums(g, xhat)
    np.testing.assert_allclose(sums[0], sum_dy, rtol=1e-6, atol=1e-6 * np.abs(g).sum())
    stats_mean, stats_m2 = kernels.batch_norm_stats(x)
    assert_within(stats_mean, t_mean, mean_err, "batch_norm_stats mean")
    assert stats_mean.dtype == stats_m2.dtype == np.float64


def test_apply_is_the_eval_normalisation_float64(kernel_path, threads):
    x, _, w, b = (a.astype(np.float64) for a in _data(BIG_NCL, 1.0, seed=2))
    mean = np.array([0.5, -1.0, 2.0, 0.0, 3.0])
    invstd = np.array([1.0, 2.0, 0.5, 3.0, 0.25])
    out, xhat = kernels.batch_norm_apply(x, mean, invstd, w, b)
    t_xhat = (x - mean[:, None]) * invstd[:, None]
    np.testing.assert_allclose(xhat, t_xhat, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out, t_xhat * w[:, None] + b[:, None], rtol=1e-13, atol=1e-13)
    out_plain, _ = kernels.batch_norm_apply(x, mean, invstd, None, None)
    np.testing.assert_allclose(out_plain, t_xhat, rtol=1e-13, atol=1e-13)


def test_non_finite_inputs_spread_to_their_channel_only(kernel_path):
    x, g, w, b = _data((4, 3, 8192))
    x[1, 1, 5] = np.inf
    with np.errstate(invalid="ignore"):  # inf - inf in the reference's centring
        out, _, mean, _, _ = kernels.batch_norm_train_forward(x, w, b, 1e-5)
    assert np.isposinf(mean[1]) and np.isnan(out[:, 1]).all()
    assert np.isfinite(out[:, [0, 2]]).all()


@pytest.mark.parametrize("shape", [(16, 9, 8, 8), (3, 5, 7)])
def test_batch_norm_module_float32_vs_torch(kernel_path, threads, shape):
    torch = torch_oracle()
    x, g, w, b = _data(shape, 3.0, seed=4)
    c = shape[1]
    ours = ddp.nn.BatchNorm2d(c) if len(shape) == 4 else ddp.nn.BatchNorm1d(c)
    ref = torch.nn.BatchNorm2d(c) if len(shape) == 4 else torch.nn.BatchNorm1d(c)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(w))
        ref.bias.copy_(torch.tensor(b))
    ours.weight.data = ddp.tensor(w)
    ours.bias.data = ddp.tensor(b)
    for step in range(2):
        xo, xt = ddp.tensor(x + step, requires_grad=True), torch.tensor(x + step,
                                                                         requires_grad=True)
        yo, yt = ours(xo), ref(xt)
        yo.backward(ddp.tensor(g))
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(yo.detach().numpy(), yt.detach().numpy(), rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(ours.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=1e-4,
                               atol=1e-3)
    np.testing.assert_allclose(ours.bias.grad.numpy(), ref.bias.grad.numpy(), rtol=1e-4,
                               atol=1e-3)
    np.testing.assert_allclose(ours.running_mean.numpy(), ref.running_mean.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ours.running_var.numpy(), ref.running_var.numpy(), rtol=1e-5,
                               atol=1e-6)
    ours.eval()
    ref.eval()
    np.testing.assert_allclose(ours(ddp.tensor(x)).detach().numpy(),
                               ref(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------------------------------------- SGD
SGD_CONFIGS = [
    {"weight_decay": 5e-4, "momentum": 0.9, "dampening": 0.0, "nesterov": False,
     "maximize": False},
    {"weight_decay": 0.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
     "maximize": False},
    {"weight_decay": 1e-2, "momentum": 0.8, "dampening": 0.3, "nesterov": False,
     "maximize": True},
    {"weight_decay": 1e-3, "momentum": 0.9, "dampening": 0.0, "nesterov": True,
     "maximize": False},
]
SGD_SIZE = 3 * (1 << 17) + 5  # three threads' worth of elements, not a multiple of anything


def _sgd_truth(params, grads_per_step, lr, weight_decay, momentum, dampening, nesterov,
               maximize):
    """torch's _single_tensor_sgd in float64."""
    params = [p.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            if weight_decay:
                g = g + weight_decay * params[i]
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * g
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items() if v))
def test_sgd_three_steps_vs_float64_truth(kernel_path, threads, dtype, config):
    rng = np.random.default_rng(5)
    shapes = [(SGD_SIZE,), (64,), (3, 5, 7)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads_per_step = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    truth = _sgd_truth(params, grads_per_step, 0.05, **config)
    work = [p.copy() for p in params]
    bufs = [None] * len(work) if config["momentum"] else []
    for grads in grads_per_step:
        kernels.sgd_update_multi(work, grads, bufs, lr=0.05, **config)
    eps = float(np.finfo(dtype).eps)
    for p, t, p0 in zip(work, truth, params, strict=True):
        assert p.dtype == dtype
        # each step rounds the buffer and the parameter a few times, at their magnitudes
        assert_within(p, t, 12 * eps * (np.abs(p0) + 1), "param after 3 steps")
    if config["momentum"]:
        assert all(b.dtype == dtype and b.shape == p.shape for b, p in zip(bufs, work,
                                                                            strict=True))


def test_sgd_non_finite_values_propagate_as_in_torch(kernel_path):
    torch = torch_oracle()
    rng = np.random.default_rng(6)
    p = rng.standard_normal(SGD_SIZE).astype(np.float32)
    g = rng.standard_normal(SGD_SIZE).astype(np.float32)
    g[[3, 10, 300_000]] = [np.inf, -np.inf, np.nan]
    p[7] = np.nan
    ours, bufs = [p.copy()], [None]
    tp = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.SGD([tp], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):  # the second step meets the first one's infs in the parameter
        with np.errstate(invalid="ignore"):  # inf - inf, nan in the reference's ufuncs
            kernels.sgd_update_multi(ours, [g], bufs, lr=0.05, weight_decay=5e-4, momentum=0.9,
                                     dampening=0.0, nesterov=False, maximize=False)
        tp.grad = torch.tensor(g)
        opt.step()
    want = tp.detach().numpy()
    np.testing.assert_array_equal(np.isnan(ours[0]), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(ours[0]), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(ours[0]), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(ours[0][finite], want[finite], rtol=1e-5, atol=1e-6)
    want_buf = opt.state[tp]["momentum_buffer"].numpy()
    np.testing.assert_array_equal(np.isnan(bufs[0]), np.isnan(want_buf))
    np.testing.assert_array_equal(np.isinf(bufs[0]), np.isinf(want_buf))
    assert np.isnan(bufs[0][300_000])


def test_sgd_strided_and_mixed_tensors_take_the_reference_alongside(kernel_path):
    rng = np.random.default_rng(7)
    big = rng.standard_normal((2 * SGD_SIZE,)).astype(np.float32)
    params = [big[::2], rng.standard_normal(SGD_SIZE).astype(np.float64)]
    grads = [rng.standard_normal(SGD_SIZE).astype(np.float32),
             rng.standard_normal(SGD_SIZE).astype(np.float32)]  # float32 grad of a float64 param
    truth = _sgd_truth(params, [grads], 0.1, 1e-2, 0.9, 0.0, False, False)
    odd = big[1::2].copy()
    bufs = [None, None]
    kernels.sgd_update_multi(params, grads, bufs, lr=0.1, weight_decay=1e-2, momentum=0.9,
                             dampening=0.0, nesterov=False, maximize=False)
    for p, t in zip(params, truth, strict=True):
        assert_within(p, t, 8 * EPS32 * (np.abs(t) + 1), "param")
    np.testing.assert_array_equal(big[1::2], odd)  # the strided view's gaps stay untouched
    assert bufs[0].shape == (SGD_SIZE,) and bufs[1].dtype == np.float64


def test_optimizer_sgd_matches_torch_on_a_model(kernel_path):
    torch = torch_oracle()
    rng = np.random.default_rng(8)
    w = rng.standard_normal((300, 200)).astype(np.float32)
    ours = ddp.tensor(w.copy(), requires_grad=True)
    ref = torch.tensor(w.copy(), requires_grad=True)
    opt_o = ddp.optim.SGD([ours], lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_t = torch.optim.SGD([ref], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        g = rng.standard_normal(w.shape).astype(np.float32)
        opt_o.zero_grad()
        opt_t.zero_grad()
        ours.grad = ddp.tensor(g)
        ref.grad = torch.tensor(g)
        opt_o.step()
        opt_t.step()
    np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
