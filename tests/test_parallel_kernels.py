"""Threaded blocked CPU kernels (``ddp.ops._parallel``) and the float32 GELU that uses them."""

import numpy as np
import pytest

import ddp
from ddp.ops import _parallel

torch = pytest.importorskip("torch")


def test_for_ranges_covers_every_element_once(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    total = 3 * _parallel._MIN_PER_THREAD + 7
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
        _parallel.for_ranges(4 * _parallel._MIN_PER_THREAD, kernel)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_gelu_float32_large_vs_torch(monkeypatch, threads):
    # Large enough for several blocks and threads, odd-sized so ranges and blocks are ragged.
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3 * _parallel._MIN_PER_THREAD + 5) * 3).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    d = ddp.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    out = ddp.nn.functional.gelu(d)
    ref = torch.nn.functional.gelu(t)
    out.backward(ddp.tensor(g))
    ref.backward(torch.tensor(g))
    assert out.dtype == ddp.float32 and d.grad.dtype == ddp.float32
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)
