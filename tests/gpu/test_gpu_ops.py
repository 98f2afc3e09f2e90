"""On a GPU every op, loss and optimizer gives the CPU's numbers (float32 tolerance)."""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.nn.functional as F
from ddp import kernels
from ddp.kernels import reference

pytestmark = pytest.mark.gpu


def _rng(seed=0):
    return np.random.default_rng(seed)


def _both(fn, arrays, int_arrays=()):
    """Run ``fn`` on CPU and GPU tensors; return (cpu outputs+grads, gpu outputs+grads)."""
    results = []
    for dev in ("cpu", "cuda"):
        ts = [ddp.tensor(a, device=dev, requires_grad=True) for a in arrays]
        its = [ddp.tensor(a, device=dev) for a in int_arrays]
        out = fn(*ts, *its)
        w = ddp.tensor(_rng(9).standard_normal(tuple(out.shape)).astype(np.float32), device=dev)
        (out * w).sum().backward()
        results.append([out.detach().cpu().numpy()] + [t.grad.cpu().numpy() for t in ts])
    return results


f32 = np.float32
OPS = {
    "add_broadcast": (lambda a, b: a + b, [(4, 5), (5,)], []),
    "mul_div": (lambda a, b: a * b / (b.abs() + 1), [(4, 5), (4, 5)], []),
    "matmul": (lambda a, b: a @ b, [(3, 4, 5), (5, 6)], []),
    "sum_mean": (lambda a: a.sum(1, keepdim=True) + a.mean(), [(4, 5)], []),
    "exp_log_tanh": (lambda a: a.exp().add(1).log() * a.tanh(), [(4, 5)], []),
    "relu_sigmoid": (lambda a: F.relu(a) + a.sigmoid(), [(4, 5)], []),
    "softmax": (lambda a: F.softmax(a, dim=-1), [(4, 7)], []),
    "log_softmax": (lambda a: F.log_softmax(a, dim=0), [(4, 7)], []),
    "max_dim": (lambda a: a.max(dim=1).values, [(4, 7)], []),
    "getitem_fancy": (lambda a, i: a[i], [(6, 3)], [np.array([0, 2, 2, 5])]),
    "index_select": (lambda a, i: a.index_select(0, i), [(6, 3)], [np.array([1, 1, 4])]),
    "gather": (lambda a, i: a.gather(1, i), [(3, 4)], [np.array([[0, 1], [3, 3], [2, 0]])]),
    "cat_stack": (lambda a, b: ddp.cat([a, b]).sum(0) + ddp.stack([a, b]).mean(0).sum(0),
                  [(2, 3), (2, 3)], []),
    "transpose_reshape": (lambda a: a.transpose(0, 1).reshape(-1), [(3, 4)], []),
    "where_masked_fill": (lambda a, b: ddp.where(a > 0, a, b).masked_fill(b > 1, 0.5),
                          [(4, 5), (4, 5)], []),
    "gelu_erf": (lambda a: F.gelu(a), [(4, 33)], []),
    "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), [(4, 33)], []),
    "layer_norm": (lambda a, w, b: F.layer_norm(a, (16,), w, b), [(3, 5, 16), (16,), (16,)],
                   []),
    "linear": (lambda a, w, b: F.linear(a, w, b), [(4, 6), (3, 6), (3,)], []),
    "embedding": (lambda w, i: F.embedding(i, w), [(10, 4)], [np.array([[1, 3], [3, 9]])]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=1), [(2, 3, 6, 6),
                                                                       (4, 3, 3, 3), (4,)], []),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), [(2, 3, 6, 6)], []),
    "cross_entropy": (lambda a, t: F.cross_entropy(a, t), [(8, 5)],
                      [np.array([0, 1, 2, 3, 4, 0, 1, 2])]),
    "cross_entropy_ignore": (lambda a, t: F.cross_entropy(a, t, ignore_index=1), [(8, 5)],
                             [np.array([0, 1, 2, 3, 4, 0, 1, 2])]),
    "cross_entropy_smooth": (lambda a, t: F.cross_entropy(a, t, label_smoothing=0.1), [(8, 5)],
                             [np.array([0, 1, 2, 3, 4, 0, 1, 2])]),
    "mse_loss": (lambda a, b: F.mse_loss(a, b), [(4, 5), (4, 5)], []),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_on_gpu_equals_cpu(name):
    fn, shapes, ints = OPS[name]
    rng = _rng(1)
    arrays = [rng.standard_normal(s).astype(f32) for s in shapes]
    cpu, gpu = _both(fn, arrays, ints)
    for c, g in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw", "adam_amsgrad"])
def test_optimizer_on_gpu_equals_cpu(opt):
    make = {
        "sgd": lambda p: ddp.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        "adam": lambda p: ddp.optim.Adam(p, lr=0.01, weight_decay=0.01),
        "adamw": lambda p: ddp.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        "adam_amsgrad": lambda p: ddp.optim.Adam(p, lr=0.01, amsgrad=True),
    }[opt]
    results = []
    for dev in ("cpu", "cuda"):
        ddp.manual_seed(0)
        model = ddp.nn.Sequential(ddp.nn.Linear(6, 8), ddp.nn.GELU(), ddp.nn.LayerNorm(8),
                                  ddp.nn.Linear(8, 3)).to(dev)
        optimizer = make(model.parameters())
        x = ddp.tensor(_rng(2).standard_normal((16, 6)).astype(f32), device=dev)
        y = ddp.tensor(_rng(3).integers(0, 3, 16), device=dev)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        results.append([p.detach().cpu().numpy() for p in model.parameters()])
    for c, g in zip(*results, strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- fused kernels
def test_fused_kernels_equal_their_references_on_gpu():
    if not kernels.FUSED:
        pytest.skip("DDP_FUSED_KERNELS=0 (or the fake CuPy of tests/_fake_cupy.py)")
    cp = ddp.backend.cupy_module()
    rng = _rng(4)
    x = cp.asarray(rng.standard_normal((37, 300)).astype(f32) * 3)
    g = cp.asarray(rng.standard_normal((37, 300)).astype(f32))
    assert kernels._impl(x) is not reference
    for approx in ("none", "tanh"):
        y, s = kernels.gelu_forward(x, approx)
        y_ref, s_ref = reference.gelu_forward(x, approx)
        cp.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
        cp.testing.assert_allclose(kernels.gelu_backward(g, x, s, approx),
                                   reference.gelu_backward(g, x, s_ref, approx),
                                   rtol=1e-5, atol=1e-6)
    w, b = cp.asarray(rng.standard_normal(300).astype(f32)), cp.asarray(rng.random(300, f32))
    for ww, bb in ((w, b), (None, None)):
        out, xhat, rstd = kernels.layer_norm_forward(x, ww, bb, 1e-5)
        o_ref, xh_ref, r_ref = reference.layer_norm_forward(x, ww, bb, 1e-5)
        for a, e in ((out, o_ref), (xhat, xh_ref), (rstd, r_ref)):
            cp.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
        cp.testing.assert_allclose(kernels.layer_norm_backward_input(g, xhat, rstd, ww),
                                   reference.layer_norm_backward_input(g, xh_ref, r_ref, ww),
                                   rtol=1e-4, atol=1e-5)
    for cols in (300, 7, 1):  # rows longer and shorter than a block, and of one element
        xs, gs = x[:, :cols], g[:, :cols]
        y = kernels.softmax_forward(xs)
        cp.testing.assert_allclose(y, reference.softmax_forward(xs), rtol=1e-5, atol=1e-7)
        cp.testing.assert_allclose(kernels.softmax_backward(gs, y),
                                   reference.softmax_backward(gs, y), rtol=1e-4, atol=1e-6)
    x64 = x.astype(cp.float64)
    cp.testing.assert_allclose(kernels.softmax_forward(x64), reference.softmax_forward(x64),
                               rtol=1e-12, atol=1e-15)
    t = cp.asarray(rng.integers(0, 300, 37))
    prob, nll = kernels.softmax_nll(x, t)
    p_ref, n_ref = reference.softmax_nll(x, t)
    cp.testing.assert_allclose(prob, p_ref, rtol=1e-5, atol=1e-7)
    cp.testing.assert_allclose(nll, n_ref, rtol=1e-5, atol=1e-5)
    start = rng.standard_normal(1000).astype(f32)
    p = [cp.asarray(start) for _ in range(2)]
    m = [cp.zeros(1000, f32) for _ in range(2)]
    v = [cp.zeros(1000, f32) for _ in range(2)]
    for step in (1, 2, 3):
        grad = cp.asarray(rng.standard_normal(1000).astype(f32))
        hyper = dict(step=step, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                     decoupled=True, maximize=False)
        kernels.adam_update(p[0], grad, m[0], v[0], **hyper)
        reference.adam_update(p[1], grad, m[1], v[1], **hyper)
    for a, e in ((p[0], p[1]), (m[0], m[1]), (v[0], v[1])):
        cp.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled,maximize", [(True, False), (False, True)])
def test_multi_tensor_adam_equals_per_tensor_reference(dtype, decoupled, maximize):
    if not kernels.FUSED:
        pytest.skip("DDP_FUSED_KERNELS=0 (or the fake CuPy of tests/_fake_cupy.py)")
    cp = ddp.backend.cupy_module()
    rng = _rng(6)
    sizes = [(7,), (0,), (300, 5), (1,), (1000,)]  # an empty tensor among them
    starts = [rng.standard_normal(s).astype(dtype) for s in sizes]
    fused = [[cp.asarray(a) for a in starts], [cp.zeros(s, dtype) for s in sizes],
             [cp.zeros(s, dtype) for s in sizes]]
    ref = [[cp.asarray(a) for a in starts], [cp.zeros(s, dtype) for s in sizes],
           [cp.zeros(s, dtype) for s in sizes]]
    for step in (1, 2, 3):
        grads = [cp.asarray(rng.standard_normal(s).astype(dtype)) for s in sizes]
        hyper = dict(step=step, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                     decoupled=decoupled, maximize=maximize)
        kernels.adam_update_multi(fused[0], grads, fused[1], fused[2], **hyper)
        reference.adam_update_multi(ref[0], grads, ref[1], ref[2], **hyper)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip(fused, ref, strict=True):
        for a, e in zip(got, want, strict=True):
            cp.testing.assert_allclose(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("momentum,dampening,nesterov,wd,maximize", [
    (0.9, 0.0, False, 0.0, False), (0.9, 0.1, False, 0.01, True), (0.8, 0.0, True, 0.01, False),
    (0.0, 0.0, False, 0.1, False)])
def test_multi_tensor_sgd_equals_per_tensor_reference(momentum, dampening, nesterov, wd,
                                                      maximize):
    if not kernels.FUSED:
        pytest.skip("DDP_FUSED_KERNELS=0 (or the fake CuPy of tests/_fake_cupy.py)")
    from ddp.optim import _functional

    cp = ddp.backend.cupy_module()
    rng = _rng(8)
    sizes = [(7,), (0,), (300, 5), (1000,)]
    starts = [rng.standard_normal(s).astype(f32) for s in sizes]
    fused, ref = [cp.asarray(a) for a in starts], [a.copy() for a in starts]
    fused_bufs, ref_bufs = [None] * len(sizes), [None] * len(sizes)
    hyper = dict(lr=0.1, weight_decay=wd, momentum=momentum, dampening=dampening,
                 nesterov=nesterov, maximize=maximize)
    for _ in range(3):  # the first step creates the buffers (per-tensor path), then fused
        grads = [rng.standard_normal(s).astype(f32) for s in sizes]
        _functional.sgd(fused, [cp.asarray(g) for g in grads], fused_bufs, **hyper)
        _functional.sgd(ref, grads, ref_bufs, **hyper)
    for a, e in zip(fused, ref, strict=True):
        np.testing.assert_allclose(cp.asnumpy(a), e, rtol=1e-6, atol=1e-7)


def test_column_sums_equal_sum_over_rows():
    cp = ddp.backend.cupy_module()
    x = cp.asarray(_rng(7).standard_normal((513, 37)).astype(f32))
    cp.testing.assert_allclose(kernels.column_sums(x), x.sum(axis=0), rtol=1e-5, atol=1e-4)
    assert kernels.column_sums(x[:0]).tolist() == [0.0] * 37
