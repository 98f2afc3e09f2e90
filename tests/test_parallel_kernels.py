"""Threaded blocked CPU kernels (``ddp.kernels.parallel``) and the float32 GELU that uses them."""

import numpy as np
import pytest
from _helpers import (
    EPS32,
    GELU_DDP_BACKWARD,
    GELU_DDP_FORWARD,
    GELU_TORCH_BACKWARD,
    GELU_TORCH_FORWARD,
    assert_within,
    gelu_float64,
)

import ddp
from ddp.kernels import parallel as _parallel


def test_for_ranges_covers_every_element_once(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    total = 3 * _parallel.MIN_PER_THREAD + 7
    hits = np.zeros(total, dtype=np.int64)

    def kernel(start, stop):
        hits[start:stop] += 1

    _parallel.for_ranges(total, kernel)
    assert hits.min() == 1 and hits.max() == 1


def test_for_ranges_propagates_errors(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    def kernel(start, stop):
        if start > 0:
            raise ValueError(f"bad range {start}")

    with pytest.raises(ValueError, match="bad range"):
        _parallel.for_ranges(4 * _parallel.MIN_PER_THREAD, kernel)


def _gelu_float32(threads: str, monkeypatch):
    """ddp's float32 GELU and its gradient on a large ragged input: (x, g, y, dx)."""
    # Large enough for several blocks and threads, odd-sized so ranges and blocks are ragged.
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3 * _parallel.MIN_PER_THREAD + 5) * 3).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    d = ddp.tensor(x, requires_grad=True)
    out = ddp.nn.functional.gelu(d)
    out.backward(ddp.tensor(g))
    assert out.dtype == ddp.float32 and d.grad.dtype == ddp.float32
    return x, g, out.detach().numpy(), d.grad.numpy()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_gelu_float32_large_vs_float64_truth(monkeypatch, threads, kernel_path):
    x, g, y, dx = _gelu_float32(threads, monkeypatch)
    y64, slope64 = gelu_float64(x)
    assert_within(y, y64, GELU_DDP_FORWARD * EPS32 * np.abs(x), "gelu forward")
    assert_within(dx, g * slope64, GELU_DDP_BACKWARD * EPS32 * np.abs(g), "gelu backward")


@pytest.mark.parametrize("threads", ["1", "2"])
def test_gelu_float32_large_vs_torch(monkeypatch, threads, torch, kernel_path):
    # Each library is within its own float32 bound of the truth, on any x86-64 CPU; the two may
    # therefore differ by the sum of both bounds, and never by more.
    x, g, y, dx = _gelu_float32(threads, monkeypatch)
    t = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.gelu(t)
    ref.backward(torch.tensor(g))
    forward = (GELU_DDP_FORWARD + GELU_TORCH_FORWARD) * EPS32 * np.abs(x)
    backward = (GELU_DDP_BACKWARD + GELU_TORCH_BACKWARD) * EPS32 * np.abs(g)
    assert_within(y, ref.detach().numpy(), forward, "gelu forward vs torch")
    assert_within(dx, t.grad.numpy(), backward, "gelu backward vs torch")


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("shapes", [((7, 3, 33, 17), (7, 3, 17, 9)),     # ragged batch
                                    ((5, 1, 8, 6), (4, 6, 3)),             # broadcast batch
                                    ((2, 4, 5), (5, 7)),                   # one matrix
                                    ((1, 3, 4, 5), (1, 3, 5, 2))])         # batch of one
def test_batched_matmul_vs_float64_truth(monkeypatch, threads, shapes):
    # Each element is a K-term float32 dot product: within K * eps * sum|a||b| of the truth.
    from ddp import kernels

    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    before = _blas_threads()
    out = kernels.matmul(a, b)
    assert _blas_threads() == before  # BLAS's thread count is restored
    assert out.dtype == np.float32 and out.shape == np.matmul(a, b).shape
    k = a.shape[-1]
    truth = np.matmul(a.astype(np.float64), b.astype(np.float64))
    bound = k * EPS32 * np.matmul(np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    assert_within(out, truth, bound, "batched matmul")


def test_batched_matmul_backward_on_transposed_views_vs_torch(monkeypatch, torch):
    # Attention's layout: q, k, v are transposed views of one (B, T, 3C) array.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((3, 10, 24)).astype(np.float32)
    g = rng.standard_normal((3, 2, 10, 10)).astype(np.float32)
    grads = []
    for lib in (ddp, torch):
        x = lib.tensor(qkv, requires_grad=True)
        q, k, _ = x.split(8, dim=2)
        q = q.view(3, 10, 2, 4).transpose(1, 2)
        k = k.view(3, 10, 2, 4).transpose(1, 2)
        att = q @ k.transpose(-2, -1)
        att.backward(lib.tensor(g))
        grads.append((att.detach().numpy(), x.grad.numpy()))
    # 4-term (forward) and 10-term (backward) float32 sums of values below ~30 in magnitude
    assert_within(grads[0][0], grads[1][0], 2 * 4 * EPS32 * 30, "attention scores vs torch")
    assert_within(grads[0][1], grads[1][1], 2 * 10 * EPS32 * 100, "q/k gradients vs torch")


@pytest.mark.parametrize("threads", ["2", "3"])
def test_row_kernels_split_over_threads_equal_one_thread(monkeypatch, threads):
    # Rows are independent and each range runs the same arithmetic: bitwise equal results.
    from ddp.kernels import reference

    rng = np.random.default_rng(3)
    rows = 3 * _parallel.MIN_PER_THREAD // 129 + 5  # ragged ranges over 3 threads
    x = rng.standard_normal((rows, 129)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = (rng.standard_normal(129).astype(np.float32) for _ in range(2))

    def run():
        out, xhat, rstd = reference.layer_norm_forward(x, w, b, 1e-5)
        y = reference.softmax_forward(x)
        return (out, xhat, rstd, reference.layer_norm_backward_input(g, xhat, rstd, w),
                reference.layer_norm_backward_input(g, xhat, rstd, None), y,
                reference.softmax_backward(g, y), reference.layer_norm_forward(x, None, None,
                                                                                1e-5)[0])

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    single = run()
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    for k, (got, expected) in enumerate(zip(run(), single, strict=True)):
        assert got.dtype == np.float32, k
        np.testing.assert_array_equal(got, expected, err_msg=f"output {k}")
